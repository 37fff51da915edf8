"""Training recipes (segmentation model)."""
