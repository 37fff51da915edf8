"""Segmentation evaluation and the synthetic test sets."""
