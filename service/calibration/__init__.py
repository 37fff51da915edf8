"""HU -> BMD calibration (phantom, internal, default), the thoracolumbar curve, diagnosis and the assessment entry."""
