# The rerankd gateway image (`rerankd serve`): the serving install only, no torch/transformers.
# Written, not built here (no Docker engine on the development machine). From the repo root:
#   docker build -f deploy/docker/gateway.Dockerfile -t REGISTRY/rerankd/gateway:0.1.0 .
# Pin the base image by digest in your registry mirror (tags can move).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY protos protos
COPY cli cli
COPY server server
COPY contract contract
COPY interactions interactions
COPY training training
COPY evaluation evaluation
COPY export export
# Editable: server.api.pb finds protos/ next to the code. The stubs are generated now, so
# the running container never writes to its (read-only) root filesystem.
RUN pip install -e . && python -m server.api.pb --generate \
    && python -c "import cli.main, server.api.app, server.api.pb"

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# Numeric uid so Kubernetes' runAsNonRoot can check it.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin rerankd
USER 10001
# gRPC API (server.port) and Prometheus metrics (telemetry.metrics_port).
EXPOSE 50051 9464
ENTRYPOINT ["rerankd"]
CMD ["serve"]
