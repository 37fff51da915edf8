"""Who the node is in the objects it writes."""

NODE_MANUFACTURER = "bmd-node project"
"""Manufacturer of every result object the node writes; the receive side recognises its own objects by it."""
