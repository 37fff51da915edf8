"""Series: completeness, checks, selection and the volume loader (headers read once per series)."""
