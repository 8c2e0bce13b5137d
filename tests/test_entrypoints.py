"""The processes' entry points: a bad setting stops them at start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("module", "variable", "value"), [
    ("gpu_agent", "VIDFLEET_FETCH_TIMEOUT_S", "soon"),
    ("controller", "VIDFLEET_LOG_JSON", "maybe"),
])
def test_bad_setting_exits_2_naming_it(module: str, variable: str, value: str) -> None:
    done = subprocess.run([sys.executable, "-m", module], env={**os.environ, variable: value},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"bad configuration in {variable}" in done.stderr


def test_vast_without_a_key_exits_2_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIDFLEET_VAST_API_KEY"}
    done = subprocess.run([sys.executable, "-c", "from client.cli import main; main()",
                           "controller", "run", "--provider", "vast"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "VIDFLEET_VAST_API_KEY" in done.stderr


def test_vast_without_an_image_exits_2_saying_how_to_make_one() -> None:
    """The image has no usable default: nothing publishes one for you."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFLEET_")}
    env |= {"VIDFLEET_VAST_API_KEY": "k", "VIDFLEET_ALLOW_PLAINTEXT_AGENT_URL": "1"}
    done = subprocess.run([sys.executable, "-c", "from client.cli import main; main()",
                           "controller", "run", "--provider", "vast"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "VIDFLEET_VAST_IMAGE" in done.stderr and "make image" in done.stderr


def test_controller_run_passes_the_global_creds_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``vidfleet --creds F controller run``: the controller connects with F (here F does not
    exist, so it says so and exits, instead of waiting on the server without credentials)."""
    missing = tmp_path / "ctl.creds"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFLEET_")}
    done = subprocess.run([sys.executable, "-c", "from client.cli import main; main()",
                           "--creds", str(missing), "--nats-url", "nats://127.0.0.1:9",
                           "controller", "run"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert str(missing) in done.stderr


def test_simulate_runs_the_controllers_simulator() -> None:
    done = subprocess.run([sys.executable, "-c", "from client.cli import main; main()",
                           "simulate", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--trace" in done.stdout
