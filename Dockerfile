# qtts speech server: one engine on one GPU, or with `--replicas N` one engine per GPU of the host behind
# Ray Serve. Build: docker build -t qtts .   Run and scale: docs/deploy.md.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch's wheel carries its CUDA libraries; the image brings the driver hookup and the NVIDIA_* settings
ARG TORCH_SPEC="torch==2.11.*"
ARG QTTS_EXTRAS="server,ray"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/qtts \
    PATH=/opt/qtts/bin:$PATH

# Triton builds its kernel launchers with a C compiler and Python's headers when the server starts;
# the distribution's current packages are what we want (no version pins)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3013
RUN python3 -m venv /opt/qtts && pip install "${TORCH_SPEC}"

WORKDIR /opt/qtts/src
COPY pyproject.toml README.md ./
COPY qtts ./qtts
# hadolint ignore=DL3013
RUN pip install ".[${QTTS_EXTRAS}]"

# KubeRay starts Ray through a login shell, which may reset PATH
RUN ln -s /opt/qtts/bin/qtts /opt/qtts/bin/ray /opt/qtts/bin/serve /usr/local/bin/ \
    && useradd --create-home --uid 10001 qtts \
    && mkdir -p /data /models \
    && chown qtts /data
USER 10001
WORKDIR /home/qtts

# QTTS_MODEL: a hub id (downloaded into /data/hf once) or a folder mounted under /models.
# /data keeps the hub cache and the clone voices (/data/qtts/voices) across restarts.
ENV QTTS_MODEL=Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice \
    QTTS_PORT=8000 \
    HF_HOME=/data/hf \
    XDG_DATA_HOME=/data
VOLUME ["/data"]
EXPOSE 8000

# /health answers 200 only once the engine is warmed up (CUDA graphs captured); that can take minutes
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['QTTS_PORT']}/health\", timeout=4)"]

# more `qtts serve` flags go after the image name: docker run ... qtts --max-batch 64 --replicas 2
ENTRYPOINT ["/bin/sh", "-c", "exec qtts serve --model \"$QTTS_MODEL\" --host 0.0.0.0 --port \"$QTTS_PORT\" \"$@\"", "qtts-serve"]
