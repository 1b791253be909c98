"""Patho-R1's recipe on images: Qwen2.5-VL data, preprocessing, stages and MCQ rewards."""
