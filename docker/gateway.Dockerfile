# The gateway (`drca serve --redis`): HTTP API, web app and this replica's copy of the index. CPU only.
# Build from the repository root: docker build -f docker/gateway.Dockerfile -t drca-gateway .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 drca \
 && mkdir -p /data /var/lib/drca/index \
 && chown drca:drca /data /var/lib/drca/index

WORKDIR /app
# torch first, CPU build (the gateway never runs the model)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY model/ model/
COPY media/ media/
COPY training/ training/
COPY indexer/ indexer/
COPY service/ service/
COPY cli/ cli/
RUN pip install '.[cpu]'

USER drca
# uploads are shared with the workers (/data); the index copy is this container's own and is rebuilt
# from the Redis vector stream when the container is new
ENV DRCA_HOST=0.0.0.0 DRCA_PORT=8000 DRCA_DATA_DIR=/data DRCA_REPLICA_INDEX_DIR=/var/lib/drca/index
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["drca", "serve"]
