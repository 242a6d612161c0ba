"""make_api_client: in-cluster (service account over TLS) and kubeconfig, against the fake API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.config import incluster_config

from gateway.k8s.catalog import KubernetesCatalog
from gateway.k8s.client import make_api_client
from tests.fake_k8s import FakeKube, serve

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeKube:
    fake = FakeKube()
    fake.add_session("alpha", "one", "2025-01-01T00:00:00Z")
    return fake


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: it is also the CA the service account trusts."""
    cert, key = tmp_path / "ca.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


async def test_in_cluster(
    fake: FakeKube, tls_files: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_host = client.Configuration.get_default_copy().host
    token = tmp_path / "token"
    token.write_text("sa-token")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", tls_files[0])
    async with serve(fake.app(), ssl_files=tls_files) as url:
        port = url.rsplit(":", 1)[1]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        api = await make_api_client("/nonexistent/kubeconfig")  # ignored inside a cluster
        try:
            assert api.configuration.host == f"https://127.0.0.1:{port}"
            info = await KubernetesCatalog(api).get("alpha", "one")
        finally:
            await api.close()
    assert info is not None and info.name == "one"
    assert fake.authorizations == ["Bearer sa-token"]
    assert client.Configuration.get_default_copy().host == default_host  # global default untouched


async def test_kubeconfig(fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default_host = client.Configuration.get_default_copy().host
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with serve(fake.app()) as url:
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "me", "user": {"token": "kc-token"}}],
            "contexts": [{"name": "dev", "context": {"cluster": "fake", "user": "me"}}],
        }))
        api = await make_api_client(str(kubeconfig))
        try:
            assert api.configuration.host == url
            page = await KubernetesCatalog(api).page("alpha", 10, None, None)
        finally:
            await api.close()
    assert [i.name for i in page.items] == ["one"]
    assert fake.authorizations == ["Bearer kc-token"]
    assert client.Configuration.get_default_copy().host == default_host
