# syntax=docker/dockerfile:1
# agui-gateway image: the gateway wheel and its dependencies on python:3.11-slim, run as uid 10001.
#   docker build -t agui-gateway:0.1.0 .

# Stage 1: build wheels for the gateway and every dependency (no compiler needed at run time).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --wheel-dir /wheels .

# Stage 2: install those wheels only; no build tools, no sources, no pip cache.
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels agui-gateway \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /workspace \
 && chown 10001:10001 /workspace

LABEL org.opencontainers.image.title="agui-gateway" \
      org.opencontainers.image.description="Streams AG-UI agent sessions to user interfaces over WebSocket, SSE and NDJSON" \
      org.opencontainers.image.licenses="Apache-2.0"

# Listen on every interface inside the container; store logs on the /workspace volume.
# GATEWAY_AUTH stays "none" here, which the gateway refuses on 0.0.0.0: choose token or
# kubernetes auth, or set GATEWAY_ALLOW_ANONYMOUS=1 for a local trial (docs/deploy.md).
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_STATE_DIR=/workspace

WORKDIR /workspace
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]

# Exec form: agui-gateway is PID 1 and receives SIGTERM itself, so `serve` drains streams
# (GATEWAY_SHUTDOWN_GRACE) before exiting.
ENTRYPOINT ["agui-gateway"]
CMD ["serve"]
