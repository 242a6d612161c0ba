"""Thin adapters from reader items to the wire: WebSocket, SSE, NDJSON."""
