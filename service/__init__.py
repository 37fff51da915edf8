"""bmd-node: opportunistic osteoporosis screening on routine CT, as a DICOM node."""

__version__ = "0.1.0"
