"""Web: the dashboard, /health and Prometheus /metrics over HTTP (Starlette on uvicorn; see app.py, server.py)."""
