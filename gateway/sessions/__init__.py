"""Sessions: the registry of live connections (lastSeen, heartbeat, sweeper) and session catalogs."""
