# syntax=docker/dockerfile:1
# Ferryman gateway image: a two-stage build, so the runtime image holds a virtualenv and nothing that
# built it (no compiler, no pip cache, no source tree).
#
#   docker build -t ferryman .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp --env-file .env ferryman
#
# Runs as an unprivileged user with a read-only root filesystem: the only writable path it needs is /tmp
# (Prometheus multiprocess files when --workers > 1). Docs: docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the package and its runtime dependencies into /opt/ferryman ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/ferryman
# Metadata first, so the dependency layer is cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY src ./src
# The otlp extra lets traces go to Jaeger or any OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT).
RUN /opt/ferryman/bin/pip install --no-cache-dir ".[otlp]" \
    && /opt/ferryman/bin/python -m compileall -q /opt/ferryman/lib

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ferryman" \
      org.opencontainers.image.description="Self-hosted AI API gateway: OpenAI, Anthropic and Gemini behind one endpoint" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini as PID 1: it forwards SIGTERM to the gateway (which then drains gracefully) and reaps zombies
# left by worker processes; a bare Python PID 1 would do neither reliably.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ferryman \
    && useradd --system --uid 10001 --gid ferryman --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ferryman

COPY --from=build /opt/ferryman /opt/ferryman
COPY deploy/docker/config.yaml /etc/ferryman/config.yaml

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only, and the bytecode was compiled at build time.
# With --workers > 1 also set PROMETHEUS_MULTIPROC_DIR=/tmp/metrics (the Helm chart does this for you).
ENV PATH=/opt/ferryman/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric UID so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# Liveness only (not readiness): a draining gateway is still alive. No curl in a slim image; Python is here.
HEALTHCHECK --interval=30s --timeout=3s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "ferryman"]
CMD ["serve", "--config", "/etc/ferryman/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
