"""The node's HTTP surface: ASGI fast path, FastAPI app, contract, headers, errors, dashboard."""
