"""Export: the outbox and its transports (DICOM C-STORE today)."""
