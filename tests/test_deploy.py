"""deploy/nats-server.conf is a configuration the real nats-server accepts, with the auth part
`vidfleet up` generates included."""

from __future__ import annotations

import subprocess
from pathlib import Path

from broker.auth_store import AuthDir
from broker.server import find_nats_server
from tests.test_tls import make_ca, make_server_cert

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_deployment_server_config_is_valid(tmp_path: Path) -> None:
    AuthDir(tmp_path / "auth").ensure()
    (tmp_path / "tls").mkdir()
    ca_key, ca_cert = make_ca(tmp_path / "tls", "deploy")
    make_server_cert(tmp_path / "tls", ca_key, ca_cert)
    text = (DEPLOY / "nats-server.conf").read_text()
    text = text.replace("/srv/vidfleet", str(tmp_path)).replace("/etc/vidfleet/tls",
                                                                 str(tmp_path / "tls"))
    (tmp_path / "nats-server.conf").write_text(text)
    done = subprocess.run([find_nats_server(), "-c", str(tmp_path / "nats-server.conf"), "-t"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "is valid" in done.stdout + done.stderr, done.stderr


def test_make_installs_the_os_packages_before_it_makes_the_venv(tmp_path: Path) -> None:
    """A fresh Debian or Ubuntu has no python3-venv: the venv step would fail before apt ran."""
    plan = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, check=True).stdout
    assert "python3-venv" in plan and "import ensurepip, venv" in plan
    assert plan.index("apt-get install") < plan.index("python3 -m venv")
