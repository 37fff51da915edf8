"""The demo: a node plus a pretend PACS, and the example result objects in docs/results."""
