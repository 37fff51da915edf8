"""Vertebra segmentation and anatomical labelling (coarse 3-D U-Net + conventional labelling)."""
