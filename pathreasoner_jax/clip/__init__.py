"""Patho-CLIP: contrastive image–text training (records, preprocessing, loader, model, trainer)."""
