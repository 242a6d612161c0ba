"""HTTP handlers: events (append, delete, streams), export, status, health."""
