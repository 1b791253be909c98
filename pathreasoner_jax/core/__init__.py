"""Plumbing every layer may import and that imports nothing of ours: the error types
(`errors`) and atomic file writes (`io`)."""
