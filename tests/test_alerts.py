"""The alert rules (deploy/prometheus/alerts.yml) load, and each fires on the series that should
fire it and stays quiet on its near miss (promtool's own unit tests, alerts.test.yml)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.prometheus import PROMTOOL

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_rules_and_the_config_are_valid() -> None:
    rules = _promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 10 rules found" in rules.stdout
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_fires_in_its_unit_test() -> None:
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = set(re.findall(r"alert: (\w+)", (DEPLOY / "alerts.yml").read_text()))
    tested = (DEPLOY / "alerts.test.yml").read_text()
    fired = {name for name in names
             if re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels", tested)}
    assert fired == names, f"alerts never shown firing: {sorted(names - fired)}"


@pytest.mark.parametrize("broken", ["vidfleet_alarms >", "rate(vidfleet_jobs_total)"])
def test_promtool_catches_a_broken_rule(tmp_path: Path, broken: str) -> None:
    """The check above would pass on anything if promtool accepted everything."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n"
                   f"        expr: {broken}\n")
    result = subprocess.run([PROMTOOL, "check", "rules", str(bad)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
