"""agui-gateway: stream AG-UI agent sessions from append-only logs to user interfaces."""

__version__ = "0.1.0"
