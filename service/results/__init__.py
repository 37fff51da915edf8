"""Results: DICOM SEG, TID 1500 SR, key image and the codes they use."""
