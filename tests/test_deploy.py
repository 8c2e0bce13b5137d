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
