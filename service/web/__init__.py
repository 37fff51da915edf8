"""Web: health and metrics over HTTP."""
