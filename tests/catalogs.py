"""Helpers shared by the catalog tests (files and Kubernetes)."""

from __future__ import annotations

from gateway.sessions.catalog import SessionCatalog


async def walk(catalog: SessionCatalog, project: str, limit: int, search: str | None = None) -> list[str]:
    """Every session name, following continue tokens; each page full but the last."""
    names: list[str] = []
    token: str | None = None
    while True:
        page = await catalog.page(project, limit, token, search)
        assert len(page.items) <= limit
        names += [i.name for i in page.items]
        token = page.continue_token
        if token is None:
            return names
        assert len(page.items) == limit
