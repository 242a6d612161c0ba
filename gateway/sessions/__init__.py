"""Session catalogs: where the lists of sessions of a project come from (PROTOCOL §3, §7)."""
