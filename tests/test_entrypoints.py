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
