"""deploy/.env.example lists every controller setting at its default, in a form the real
loader reads back: it is what ``python -m controller.env_example`` prints now, its keys are
exactly ControllerConfig's fields, and sourced by a shell it loads as the defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from broker.config import Secret, load_config
from controller.config import ControllerConfig
from controller.env_example import COMMAND, env_value, field_comments, render

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"


def _keys(text: str) -> list[str]:
    return [line.partition("=")[0] for line in text.splitlines()
            if line and not line.startswith("#")]


def test_the_file_is_what_the_generator_prints_now() -> None:
    """Run as the header says (a new setting without a regenerated file fails here)."""
    printed = subprocess.run([sys.executable, "-m", "controller.env_example"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert ENV_EXAMPLE.read_text() == printed, (
        f"deploy/.env.example is stale: run `.venv/bin/{COMMAND}` and commit the result")
    assert f"`{COMMAND}`" in printed.splitlines()[1]


def test_its_keys_are_exactly_the_controller_settings() -> None:
    keys = _keys(ENV_EXAMPLE.read_text())
    fields = [f"VIDFLEET_{f.name.upper()}" for f in msgspec.structs.fields(ControllerConfig)]
    assert len(keys) == len(set(keys)), "a key is listed twice"
    assert sorted(set(keys) - set(fields)) == [], "keys that are no setting"
    assert sorted(set(fields) - set(keys)) == [], "settings the file leaves out"
    assert keys == fields  # in the Struct's order, so related settings stay together


def test_sourced_by_a_shell_it_loads_as_the_defaults() -> None:
    """What compose's env_file, systemd's EnvironmentFile and ``set -a; . FILE`` do: the
    values become environment variables, which the real loader reads back as the defaults."""
    exported = subprocess.run(
        ["env", "-i", "sh", "-c", 'set -a && . "$0" && exec env', str(ENV_EXAMPLE)],
        capture_output=True, text=True, timeout=30, check=True).stdout
    env = dict(line.split("=", 1) for line in exported.splitlines() if "=" in line)
    listed = set(_keys(ENV_EXAMPLE.read_text()))
    assert listed <= set(env), f"not exported by sh: {sorted(listed - set(env))}"
    assert load_config(ControllerConfig, env=env) == ControllerConfig()


class _Sample(msgspec.Struct, frozen=True, kw_only=True):
    # A heading
    # on two lines.
    first: int = 1  # and its own
    plain: bool = True

    # A comment with a blank line after it belongs to nothing.

    spaced: float = 2.5
    ratio: float = 14400.0
    key: Secret = Secret("s3cret")  # never printed


def test_the_generator_keeps_each_comment_with_its_field() -> None:
    assert field_comments(_Sample) == {
        "first": ["A heading", "on two lines.", "and its own"], "plain": [], "spaced": [],
        "ratio": [], "key": ["never printed"]}
    text = render(_Sample)
    assert "# on two lines.\n# and its own\nVIDFLEET_FIRST=1\n" in text
    assert "VIDFLEET_PLAIN=true\n" in text and "VIDFLEET_RATIO=14400\n" in text
    assert "VIDFLEET_KEY=\n" in text and "s3cret" not in text
    assert "belongs to nothing" not in text


@pytest.mark.parametrize("value", ["two words", "a#b", "$HOME", '"quoted"', "it's"])
def test_a_default_that_would_need_quoting_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="quoting"):
        env_value(value)
