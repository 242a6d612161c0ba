"""One `ApiClient` for the gateway, configured in-cluster or from a kubeconfig.

The configuration is built into a private `Configuration` object (never the library's global
default), so several clients, and tests, can coexist in one process.
"""

from __future__ import annotations

import os

import aiohttp
from kubernetes_asyncio import client, config

# What a request to the API server raises when the server could not answer at all.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)


async def make_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod (KUBERNETES_SERVICE_HOST set): the service account's token and CA, re-read as they
    rotate. Elsewhere: `kubeconfig`, else $KUBECONFIG or ~/.kube/config, current context.
    The caller closes the client (`await api.close()`)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        # $KUBECONFIG is read here, not at import time (the library's default is fixed when imported)
        env_file = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        await config.load_kube_config(
            config_file=kubeconfig or env_file, client_configuration=configuration, persist_config=False
        )
    return client.ApiClient(configuration=configuration)
