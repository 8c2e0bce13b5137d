# The GPU agent image. Debian 12's FFmpeg (5.1) is built against NVENC API 11.1, so it opens
# NVENC on any NVIDIA driver >= 470.57 -- nearly every rented GPU host -- and falls back to
# libx264 by itself where there is none (the agent probes with a one-frame encode at start).
#
# `make image` builds it with podman (deploy/build-image.sh). The project is installed from
# wheels in build/wheels, made on the host first (`pip wheel . -w build/wheels`), so the
# build needs no PyPI access:
#   pip wheel . -w build/wheels && docker build -f deploy/agent.Dockerfile -t vidfleet-agent .
#   docker run --gpus all -e VIDFLEET_NATS_URL=tls://your-server:4222 vidfleet-agent
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg fonts-dejavu-core fonts-noto-core fonts-noto-cjk fontconfig \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Without "video" the NVIDIA container toolkit does not inject libnvidia-encode, and NVENC
# fails with "Cannot load libnvidia-encode.so.1" even on a GPU with NVENC.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    NVIDIA_VISIBLE_DEVICES=all \
    VIDFLEET_LOG_JSON=true \
    VIDFLEET_WORK_DIR=/work

COPY build/wheels /tmp/wheels
RUN python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels vidfleet \
 && rm -rf /tmp/wheels \
 && useradd --create-home --uid 10001 agent && mkdir -p /work && chown agent /work
# Vast.ai starts a container with an `onstart` command line run by a shell: `python` must be
# found on PATH, as the venv's.
ENV PATH=/venv/bin:$PATH
USER agent
# The agent connects out to NATS; it listens on nothing.
CMD ["/venv/bin/python", "-m", "gpu_agent"]
