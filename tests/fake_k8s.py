"""A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, real REST paths and JSON shapes.

kubernetes_asyncio talks through aiohttp, so the fake has to be a real server: a Starlette app run
by an in-process uvicorn. It serves `agenticsessions` lists (with `limit`/`continue`, and 410 for a
continue token it is told to expire), single objects, JSON merge patches of an object and of its
`status` subresource, Secrets, TokenReviews and SubjectAccessReviews, and records every request so
tests can check what the client asked for. `write_agent_registry` writes the file the platform
mounts from its `ambient-agent-registry` ConfigMap.
"""

from __future__ import annotations

import base64
import bisect
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from kubernetes_asyncio import client
from kubernetes_asyncio.config import kube_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SESSIONS = "/apis/vteam.ambient-code/v1alpha1/namespaces/{ns}/agenticsessions"
SECRET = "/api/v1/namespaces/{ns}/secrets/{name}"
MERGE_PATCH = "application/merge-patch+json"


def write_agent_registry(path: Path, ports: dict[str, int | None]) -> Path:
    """The agent registry JSON as the platform's ConfigMap holds it: one entry per runner type."""
    entries = [{"id": kind, "displayName": kind.title(), "container": {"image": f"runner-{kind}:latest"}
                | ({"port": port} if port is not None else {})} for kind, port in ports.items()]
    path.write_text(json.dumps(entries))
    return path


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(frozen=True)
class Patch:
    subresource: str  # "" for the object itself, "status" for the status subresource
    namespace: str
    name: str
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class FakeKube:
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # namespace -> name -> object
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # bearer token -> TokenReview status.user
    # (username or "group:<name>", namespace, verb) triples that SubjectAccessReviews allow
    grants: set[tuple[str, str, str]] = field(default_factory=set)
    expire_continues: int = 0  # answer this many further requests that carry a continue token with 410
    review_failure: int | None = None  # answer reviews with this HTTP status instead
    version_failure: int | None = None  # answer GET /version with this HTTP status instead
    counts: Counter[str] = field(default_factory=Counter)
    list_limits: list[int | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    review_bodies: list[dict[str, Any]] = field(default_factory=list)
    access_bodies: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (ns, name) -> base64 data
    patches: list[Patch] = field(default_factory=list)
    _sorted: dict[str, list[str]] = field(default_factory=dict)

    def add_session(self, namespace: str, name: str, created: str, *, display_name: str | None = None,
                    phase: str | None = None, status_port: int | None = None, spec_port: int | None = None,
                    padding: str = "", env: dict[str, str] | None = None,
                    stop_on_run_finished: bool | None = None) -> None:
        spec: dict[str, Any] = {"initialPrompt": padding}
        if env is not None:
            spec["environmentVariables"] = env
        if stop_on_run_finished is not None:
            spec["stopOnRunFinished"] = stop_on_run_finished
        if display_name is not None:
            spec["displayName"] = display_name
        if spec_port is not None:
            spec["runnerPort"] = spec_port
        status: dict[str, Any] = {}
        if phase is not None:
            status["phase"] = phase
        if status_port is not None:
            status["runnerPort"] = status_port
        self.objects.setdefault(namespace, {})[name] = {
            "apiVersion": "vteam.ambient-code/v1alpha1",
            "kind": "AgenticSession",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created,
                         "resourceVersion": "1", "uid": f"uid-{namespace}-{name}"},
            "spec": spec,
            "status": status,
        }
        self._sorted.pop(namespace, None)

    def add_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.secrets[(namespace, name)] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        annotations: dict[str, str] = self.objects[namespace][name]["metadata"].get("annotations", {})
        return annotations

    def names(self, namespace: str) -> list[str]:
        """Objects are listed in name order, as the API server lists them (storage key order)."""
        if namespace not in self._sorted:
            self._sorted[namespace] = sorted(self.objects.get(namespace, {}))
        return self._sorted[namespace]

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/version", self._version),
            Route(SESSIONS, self._list),
            Route(SESSIONS + "/{name}", self._get, methods=["GET"]),
            Route(SESSIONS + "/{name}", self._patch, methods=["PATCH"]),
            Route(SESSIONS + "/{name}/status", self._patch, methods=["PATCH"]),
            Route(SECRET, self._secret, methods=["GET"]),
            Route("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review, methods=["POST"]),
            Route("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review,
                  methods=["POST"]),
        ])

    async def _version(self, request: Request) -> Response:
        self._record(request, "version")
        if self.version_failure is not None:
            return JSONResponse(status_body(self.version_failure, "ServiceUnavailable", "etcd is down"),
                                self.version_failure)
        return JSONResponse({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "fake",
                             "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                             "compiler": "gc", "platform": "linux/amd64"})

    def _record(self, request: Request, kind: str) -> None:
        self.counts[kind] += 1
        self.authorizations.append(request.headers.get("authorization"))

    async def _list(self, request: Request) -> Response:
        self._record(request, "list")
        ns = request.path_params["ns"]
        raw_limit = request.query_params.get("limit")
        limit = int(raw_limit) if raw_limit else None
        self.list_limits.append(limit)
        names = self.names(ns)
        start = 0
        cont = request.query_params.get("continue")
        if cont:
            if self.expire_continues > 0:
                self.expire_continues -= 1
                expired = status_body(410, "Expired", "The provided continue parameter is too old")
                return JSONResponse(expired, 410)
            state = json.loads(base64.urlsafe_b64decode(cont))
            start = bisect.bisect_right(names, state["after"])
        end = len(names) if limit is None else min(len(names), start + limit)
        metadata: dict[str, Any] = {"resourceVersion": "42"}
        if end < len(names):
            after = json.dumps({"after": names[end - 1], "rv": 42}).encode()
            metadata["continue"] = base64.urlsafe_b64encode(after).decode()
            metadata["remainingItemCount"] = len(names) - end
        items = [self.objects[ns][n] for n in names[start:end]]
        return JSONResponse({"apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSessionList",
                             "metadata": metadata, "items": items})

    async def _get(self, request: Request) -> Response:
        self._record(request, "get")
        ns, name = request.path_params["ns"], request.path_params["name"]
        obj = self.objects.get(ns, {}).get(name)
        if obj is None:
            return JSONResponse(status_body(404, "NotFound", f'agenticsessions "{name}" not found'), 404)
        return JSONResponse(obj)

    async def _patch(self, request: Request) -> Response:
        """A JSON merge patch of an object, or (path ending /status) of its status only."""
        status_only = request.url.path.endswith("/status")
        self._record(request, "patch-status" if status_only else "patch")
        ns, name = request.path_params["ns"], request.path_params["name"]
        obj = self.objects.get(ns, {}).get(name)
        if obj is None:
            return JSONResponse(status_body(404, "NotFound", f'agenticsessions "{name}" not found'), 404)
        content_type = request.headers.get("content-type", "")
        if content_type != MERGE_PATCH:
            return JSONResponse(status_body(415, "UnsupportedMediaType", f"unsupported patch type {content_type}"),
                                415)
        body = await request.json()
        self.patches.append(Patch("status" if status_only else "", ns, name, body, time.monotonic()))
        if status_only:
            obj["status"] = merge_patch(obj.get("status"), body.get("status"))
        else:
            status = obj.get("status")
            obj.update(merge_patch(obj, {k: v for k, v in body.items() if k != "status"}))
            obj["status"] = status  # the main resource ignores status changes, as with a status subresource
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return JSONResponse(obj)

    async def _secret(self, request: Request) -> Response:
        self._record(request, "secret")
        ns, name = request.path_params["ns"], request.path_params["name"]
        data = self.secrets.get((ns, name))
        if data is None:
            return JSONResponse(status_body(404, "NotFound", f'secrets "{name}" not found'), 404)
        return JSONResponse({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                             "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}})

    async def _token_review(self, request: Request) -> Response:
        self._record(request, "tokenreview")
        body = await request.json()
        self.review_bodies.append(body)
        if self.review_failure is not None:
            return self._failure()
        user = self.users.get(body["spec"]["token"])
        status = {"authenticated": True, "user": user} if user else {"authenticated": False,
                                                                     "error": "invalid bearer token"}
        return JSONResponse({**body, "status": status}, 201)

    def _failure(self) -> Response:
        code = self.review_failure or 500
        return JSONResponse(status_body(code, "InternalError", "storage unavailable"), code)

    async def _access_review(self, request: Request) -> Response:
        self._record(request, "subjectaccessreview")
        body = await request.json()
        self.access_bodies.append(body)
        if self.review_failure is not None:
            return self._failure()
        spec = body["spec"]
        attrs = spec["resourceAttributes"]
        subjects = [spec["user"]] + ["group:" + g for g in spec.get("groups") or []]
        allowed = (attrs.get("group") == "vteam.ambient-code" and attrs.get("resource") == "agenticsessions"
                   and any((s, attrs.get("namespace"), attrs["verb"]) in self.grants for s in subjects))
        status: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            status["reason"] = "no RBAC policy matched"
        return JSONResponse({**body, "status": status}, 201)


@asynccontextmanager
async def serve(app: Starlette, ssl_files: tuple[str, str] | None = None) -> AsyncIterator[str]:
    """Run `app` on a free 127.0.0.1 port for the duration of the block; yields its base URL."""
    certfile, keyfile = ssl_files if ssl_files else (None, None)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                            access_log=False, ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):  # guard against a server that never comes up, not a timing check
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"{'https' if ssl_files else 'http'}://127.0.0.1:{port}"
        finally:
            server.should_exit = True


def use_kubeconfig(path: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point a gateway started in this process at `server`, as KUBECONFIG at process start does."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{server}"}}}}]
users: [{{name: gateway, user: {{token: gateway-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: gateway, namespace: p}}}}]
current-context: fake
""")
    # The library reads the variable once, on import: set the location it read.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@asynccontextmanager
async def api_client(url: str, token: str = "gateway-token") -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration(host=url)
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    async with client.ApiClient(configuration=configuration) as api:
        yield api

