# An encoder worker (`drca worker --redis`): the DRCA model on the GPU, taking jobs and requests from Redis.
# Build from the repository root: docker build -f docker/worker.Dockerfile -t drca-worker .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (the project's version) from the deadsnakes PPA, in a virtual environment
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 10001 drca && mkdir -p /data && chown drca:drca /data

WORKDIR /app
# torch 2.13.0 with CUDA (the default Linux wheel), then the package with faiss-gpu
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY model/ model/
COPY media/ media/
COPY training/ training/
COPY indexer/ indexer/
COPY service/ service/
COPY cli/ cli/
RUN pip install '.[gpu]'

USER drca
ENV DRCA_DATA_DIR=/data DRCA_DEVICE=cuda
# healthy while this container's worker beats its heartbeat in Redis
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 CMD ["drca", "worker", "--check"]
CMD ["drca", "worker"]
