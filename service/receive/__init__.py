"""Receive: the C-STORE SCP, its thin handlers and the durable spool."""
