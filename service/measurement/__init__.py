"""Trabecular ROI per vertebral body, HU statistics and the checks that make a level non-evaluable."""
