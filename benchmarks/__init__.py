"""Benchmarks against PyTorch baselines (`pathreasoner bench`); results in benchmarks/results/."""
