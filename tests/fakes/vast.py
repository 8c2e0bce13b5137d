"""A faithful fake of the Vast.ai REST API (shared/reference/vastai-api.md §8), for tests.

A real HTTP server on 127.0.0.1 (a free port) in a background thread, so the provider under
test and other processes (a controller, an agent's dead-man switch) reach it by ``url``.
Everything the reference documents as a quirk is reproduced: Bearer auth with its two error
shapes, ``Content-Type`` exactly ``application/json``, offer search with the operator set and
numeric coercion, offers that can be rented once, instance ids unlike offer ids, ``null →
loading → running`` with pull progress in ``status_msg``, ``ports`` null until running,
``public_ipaddr`` with a trailing newline, ``extra_env`` as pairs, 25-row pages behind an opaque
cursor, ``{"instances": null}`` once destroyed, a second destroy answering 404.

How instances move (``progress``):
- ``"manual"``: a frozen virtual clock; only ``advance(s)`` (through ``boot_stages_s``),
  ``step(id)`` and ``boot(id)`` move them.
- ``"observe"``: as manual, and every time an instance is shown (list or show) it takes one step.
- ``"realtime"``: the clock is real time (plus any ``advance``), and a ticker thread walks
  instances through ``boot_stages_s`` with nobody asking, for end-to-end runs.

The container is started when an instance reaches ``running`` (as on Vast.ai, nothing of ours
runs while the image loads): ``start_container(instance_id, env, body)``, by default a real
``python -m gpu_agent`` with the platform's CONTAINER_ID / CONTAINER_API_KEY /
VAST_CONTAINERLABEL, or with ``Podman`` the create body's image, env, runtype, ``onstart``
and ``args``, as Vast.ai would start them. Destroying or stopping an instance SIGTERMs it,
SIGKILL after ``kill_grace_s``; ``close()`` ends whatever is left.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = ["ContainerHandle", "FakeContainer", "FakeInstance", "FakeVast", "Podman",
           "PodmanContainer", "Recorded"]

REPO_ROOT = Path(__file__).resolve().parents[2]
Progress = Literal["manual", "observe", "realtime"]
BootFault = Literal["pull_denied", "pull_timeout", "oci", "stuck", "exits"]


class ContainerHandle(Protocol):  # subprocess.Popen is one
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


# (instance id, the container's environment, the create request's body)
StartContainer = Callable[[int, dict[str, str], dict[str, Any]], ContainerHandle]


class FakeContainer:
    """A container with no process, for tests that need no real agent: it "runs" until
    terminated or killed, and keeps the environment it was given."""

    def __init__(self, instance_id: int, env: dict[str, str],
                 body: dict[str, Any] | None = None) -> None:
        self.instance_id, self.env = instance_id, env
        self._ended = threading.Event()
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return 0 if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired("fake-container", timeout or 0.0)
        return 0

    def terminate(self) -> None:
        self.signals.append("TERM")
        self._ended.set()

    def kill(self) -> None:
        self.signals.append("KILL")
        self._ended.set()

def launch_argv(body: Mapping[str, Any]) -> list[str]:
    """What Vast.ai runs for a create request: with runtype ``args``, ``onstart`` as the
    entrypoint (looked up on the image's PATH) and ``args`` as its arguments, no shell; with
    an ssh/jupyter runtype, its own entrypoint running ``onstart`` as a shell script."""
    onstart = str(body.get("onstart") or "")
    if "args" in str(body.get("runtype") or "").split():
        return [onstart, *[str(a) for a in body.get("args") or []]] if onstart else [
            str(a) for a in body.get("args") or []]
    return ["/bin/sh", "-c", onstart or "true"]


class Podman:
    """Starts what a create request names, as Vast.ai does, with podman: the body's image,
    with its env. ``runtype`` args: ``onstart`` replaces the image's entrypoint and ``args``
    are its arguments (no shell). Any other runtype: Vast.ai's own entrypoint runs
    ``onstart`` as a shell script. A launch the image cannot honour (no such image, no such
    command) exits, as it would there. ``command`` is the podman command line to use."""

    def __init__(self, command: list[str], *, log_dir: Path | None = None,
                 platform_env: Iterable[str] = ("CONTAINER_ID", "CONTAINER_API_KEY",
                                                "VAST_CONTAINERLABEL", "GPU_COUNT",
                                                "PUBLIC_IPADDR")) -> None:
        self.command = command
        self.log_dir = log_dir
        self._platform_env = tuple(platform_env)

    def __call__(self, instance_id: int, env: dict[str, str],
                 body: dict[str, Any]) -> PodmanContainer:
        name = f"vast-fake-C{instance_id}"
        wanted = {**dict(body.get("env") or {}),
                  **{k: env[k] for k in self._platform_env if k in env}}
        argv = [*self.command, "run", "--rm", "--name", name, "--network", "host",
                *itertools.chain.from_iterable(("--env", f"{k}={v}")
                                               for k, v in wanted.items()
                                               if not k.startswith("-"))]
        command = launch_argv(body)
        argv += ["--entrypoint", command[0], str(body["image"]), *command[1:]]
        proc = _start_logged(argv, self.log_dir, instance_id)
        return PodmanContainer(proc, self.command, name)


def _start_logged(argv: list[str], log_dir: Path | None, instance_id: int,
                  **options: Any) -> subprocess.Popen[bytes]:
    """A container's process in its own session, its output in ``<log_dir>/C.<id>.log``."""
    out: Any = subprocess.DEVNULL
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"C.{instance_id}.log", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **options)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


class PodmanContainer:
    """``podman run`` in the foreground: SIGTERM reaches the container (podman forwards
    signals); a kill kills the container, not just the client, and removes it (``--rm`` is
    the client's job, and a killed client does not do it)."""

    def __init__(self, proc: subprocess.Popen[bytes], podman: list[str], name: str) -> None:
        self._proc, self._podman, self._name = proc, podman, name

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._proc.wait(timeout)

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        subprocess.run([*self._podman, "rm", "--force", "--time", "0", self._name],
                       capture_output=True, check=False)
        self._proc.kill()


_GPU_PRESETS: dict[str, dict[str, Any]] = {
    "RTX 4090": dict(gpu_ram=24564, dph_base=0.35, min_bid=0.18, cuda_max_good=12.4,
                     driver_version="550.54.14", compute_cap=890, reliability=0.995,
                     inet_down=900.0, inet_up=600.0, dlperf=80.0, hosting_type=0),
    "RTX 3060": dict(gpu_ram=12288, dph_base=0.09, min_bid=0.05, cuda_max_good=12.2,
                     driver_version="535.86.05", compute_cap=860, reliability=0.985,
                     inet_down=450.0, inet_up=200.0, dlperf=25.0, hosting_type=0),
    "A100 SXM4": dict(gpu_ram=81920, dph_base=0.90, min_bid=0.55, cuda_max_good=12.4,
                      driver_version="550.54.14", compute_cap=800, reliability=0.998,
                      inet_down=3000.0, inet_up=3000.0, dlperf=220.0, hosting_type=1),
}
_SEARCH_ALIASES = {"cuda_vers": "cuda_max_good", "dph": "dph_total", "dphtotal": "dph_total",
                   "reliability2": "reliability", "gpu_totalram": "gpu_total_ram",
                   "driver_version": "driver_vers", "ubuntu_version": "os_version"}
_SEARCH_CONTROL = {"order", "type", "limit", "allocated_storage", "disable_bundling",
                   "extra_ids", "gpu_option", "show_incompatible", "sort_option", "template_id"}
_LIST_COLUMNS = {"id", "actual_status", "intended_status", "cur_state", "next_state", "label",
                 "gpu_name", "verification", "machine_id", "host_id", "image_uuid",
                 "start_date", "status_msg", "is_bid"}
_RUNTYPES = {"args", "ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter",
             "jupyter_proxy", "jupyter_direc", "jupyter_direct"}
_PULL_DENIED = ("Error response from daemon: pull access denied for {repo}, repository does "
                "not exist or may require 'docker login': denied: requested access to the "
                "resource is denied")
_PULL_TIMEOUT = ("Error response from daemon: Get \"https://registry-1.docker.io/v2/\": "
                 "net/http: request canceled while waiting for connection (Client.Timeout "
                 "exceeded while awaiting headers)")
_OCI = ("Error response from daemon: failed to create task for container: failed to create "
        "shim task: OCI runtime create failed: runc create failed: unable to start container "
        "process: exec: \"python\": executable file not found in $PATH: unknown")
_UNSET: Any = object()


class _Bad(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("msg", ""))
        self.status, self.body = status, body


def _bad(status: int, error: str, msg: str, **extra: Any) -> _Bad:
    return _Bad(status, {"success": False, "error": error, "msg": msg, **extra})


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # with the query string, as sent
    endpoint: str
    status: int
    authorization: str
    body: Any


@dataclass(frozen=True)
class FakeInstance:
    id: int
    offer_id: int
    machine_id: int
    label: str
    actual_status: str | None
    intended_status: str
    next_state: str
    status_msg: str | None
    env: dict[str, str]  # as sent in the create request
    container_env: dict[str, str]  # what its container was started with (empty: not yet)
    api_key: str
    alive: bool  # its container process is running
    destroyed: bool


@dataclass
class _Inst:
    id: int
    offer: dict[str, Any]
    body: dict[str, Any]
    env: dict[str, str]
    api_key: str
    created_at: float
    fault: BootFault | None
    stage: int = 0  # 0 scheduling, 1 pulling, 2 pulled, 3 up
    stage_at: float = 0.0
    stuck: bool = False
    actual_status: str | None = None
    intended_status: str = "running"
    next_state: str = "running"
    status_msg: str | None = None
    offline: bool = False
    ports: dict[str, Any] | None = None
    destroyed: bool = False
    linger_views: int = 0
    handle: ContainerHandle | None = None
    container_env: dict[str, str] = field(default_factory=dict)

    @property
    def gone(self) -> bool:
        return self.destroyed and self.linger_views <= 0


@dataclass
class _Fault:
    endpoint: str
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    times: int


@dataclass
class _Exchange:
    handler: BaseHTTPRequestHandler
    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    endpoint: str = "unknown"
    authorization: str = ""
    identity: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class FakeVast:
    def __init__(self, *, api_key: str = "test-vast-key", progress: Progress = "manual",
                 boot_stages_s: tuple[float, float, float] = (2.0, 5.0, 5.0),
                 ticker_s: float = 0.02, start_container: StartContainer | None = None,
                 base_env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT,
                 log_dir: Path | None = None, kill_grace_s: float = 10.0,
                 default_offers: bool = True, credit: float = 100.0,
                 min_intervals_s: Mapping[str, float] | None = None,
                 rate_limit_text: bool = True, bad_key_status: int = 401,
                 destroy_linger_views: int = 1, gone_as_404: bool = False,
                 accept_string_env: bool = False) -> None:
        self.api_key = api_key
        self.progress = progress
        self.boot_stages_s = boot_stages_s
        self.kill_grace_s = kill_grace_s
        self.credit = credit
        self.min_intervals_s = dict(min_intervals_s or {})  # endpoint -> seconds; off if empty
        self.rate_limit_text = rate_limit_text
        self.bad_key_status = bad_key_status
        self.destroy_linger_views = destroy_linger_views
        self.gone_as_404 = gone_as_404
        self.accept_string_env = accept_string_env
        self._start_container = start_container or self._spawn_agent
        self._bin_dir: str | None = None
        self._base_env = dict(base_env if base_env is not None else
                              {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR")
                               if k in os.environ})
        self._cwd, self._log_dir = cwd, log_dir
        self._cond = threading.Condition(threading.RLock())
        self._epoch = time.time()
        self._offset_s = 0.0
        self._billed_at = self._epoch
        self._offers: dict[int, dict[str, Any]] = {}
        self._stolen: dict[int, int] = {}
        self._insts: dict[int, _Inst] = {}
        self._offer_ids = itertools.count(9_100_001)
        self._machine_ids = itertools.count(41_001)
        self._inst_ids = itertools.count(20_000_001)
        self._faults: list[_Fault] = []
        self._boot_faults: deque[BootFault] = deque()
        self._create_outcomes: deque[tuple[str, dict[str, Any]]] = deque()
        self._last_call: dict[tuple[Any, str], float] = {}
        self._requests: list[Recorded] = []
        self._closed = False
        if default_offers:
            for name in _GPU_PRESETS:
                self.add_offer(gpu_name=name)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._threads = [threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                          daemon=True, name="fake-vast-http")]
        if progress == "realtime":
            self._threads.append(threading.Thread(target=self._ticker, args=(ticker_s,),
                                                  daemon=True, name="fake-vast-ticker"))
        for thread in self._threads:
            thread.start()

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeVast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            handles = [i.handle for i in self._insts.values() if i.handle is not None]
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        if self._bin_dir is not None:
            shutil.rmtree(self._bin_dir, ignore_errors=True)
        for thread in self._threads:
            thread.join(timeout=5)
        for handle in handles:
            if handle.poll() is None:
                handle.terminate()
        deadline = time.monotonic() + self.kill_grace_s
        for handle in handles:
            try:
                handle.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.kill()
                handle.wait()

    # ---- time and state progression ---------------------------------------------------------

    def now(self) -> float:
        with self._cond:
            real = time.time() if self.progress == "realtime" else self._epoch
            return real + self._offset_s

    def advance(self, seconds: float) -> None:
        """Move the fake's clock: instances progress through ``boot_stages_s``, billing runs,
        rate-limit intervals elapse."""
        with self._cond:
            self._offset_s += seconds
            self._tick()
            self._cond.notify_all()

    def step(self, instance_id: int) -> bool:
        with self._cond:
            moved = self._step(self._insts[instance_id])
            self._cond.notify_all()
            return moved

    def boot(self, instance_id: int) -> None:
        """Walk the instance as far as it goes (running, unless a boot fault stops it)."""
        with self._cond:
            while self._step(self._insts[instance_id]):
                pass
            self._cond.notify_all()

    def _ticker(self, interval_s: float) -> None:
        with self._cond:
            while not self._closed:
                self._tick()
                self._cond.notify_all()
                self._cond.wait(interval_s)

    def _tick(self) -> None:
        now = self.now()
        self._bill(now)
        for inst in self._insts.values():
            while (inst.stage < 3 and not inst.stuck and not inst.destroyed
                   and now - inst.stage_at >= self.boot_stages_s[inst.stage]):
                inst.stage_at += self.boot_stages_s[inst.stage]
                if not self._step(inst):
                    break

    def _step(self, inst: _Inst) -> bool:
        if inst.destroyed or inst.stuck or inst.intended_status != "running" or inst.stage >= 3:
            return False
        image = inst.body.get("image") or "template"
        if inst.stage == 0:
            inst.actual_status = "loading"
            inst.status_msg = f"{image}: 4c7d45f7c63c: Pulling fs layer"
            if inst.fault in ("pull_denied", "pull_timeout", "stuck"):
                inst.stuck = True
                if inst.fault == "pull_denied":
                    inst.status_msg = _PULL_DENIED.format(repo=image.split(":")[0])
                elif inst.fault == "pull_timeout":
                    inst.status_msg = _PULL_TIMEOUT
        elif inst.stage == 1:
            inst.status_msg = "4c7d45f7c63c: Download complete"
        else:
            self._come_up(inst, image)
        inst.stage += 1
        return True

    def _come_up(self, inst: _Inst, image: str) -> None:
        if inst.fault == "oci":
            inst.stuck = True
            inst.actual_status, inst.intended_status, inst.status_msg = "created", "stopped", _OCI
            return
        if inst.fault == "exits":
            inst.stuck = True
            inst.actual_status, inst.status_msg = "exited", "container exited with code 1"
            return
        mode = "args" if "args" in str(inst.body.get("runtype") or "").split() else "ssh"
        inst.actual_status, inst.status_msg = "running", f"success, running {image}/{mode}"
        port = 40_000 + inst.id % 20_000
        inst.ports = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        for key in inst.body.get("env") or {}:
            if m := re.fullmatch(r"-p (\d+):\d+(/(tcp|udp))?", key):
                inst.ports[f"{m.group(1)}/{m.group(3) or 'tcp'}"] = [
                    {"HostIp": "0.0.0.0", "HostPort": str(port + int(m.group(1)) % 97 + 1)}]
        env = {**self._base_env, **{k: v for k, v in inst.env.items() if not k.startswith("-")},
               "CONTAINER_ID": str(inst.id), "CONTAINER_API_KEY": inst.api_key,
               "VAST_CONTAINERLABEL": f"C.{inst.id}", "GPU_COUNT": "1",
               "PUBLIC_IPADDR": inst.offer["public_ipaddr"]}
        inst.container_env = env
        try:
            inst.handle = self._start_container(inst.id, env, inst.body)
        except OSError as exc:
            inst.actual_status, inst.status_msg = "exited", f"container failed to start: {exc}"
            return
        threading.Thread(target=self._watch, args=(inst, inst.handle), daemon=True).start()

    def _spawn_agent(self, instance_id: int, env: dict[str, str],
                     body: dict[str, Any] | None = None) -> ContainerHandle:
        """The create request's command, looked up on a PATH whose first entry stands for the
        image's venv (its ``python`` is this test run's interpreter). Faithful to the image
        only in that; the ``Podman`` launcher runs the image itself."""
        argv = launch_argv(body) if body is not None else ["python", "-m", "gpu_agent"]
        env = {**env, "PATH": f"{self._image_bin()}:{env.get('PATH', '')}"}
        return _start_logged(argv, self._log_dir, instance_id, cwd=self._cwd, env=env)

    def _image_bin(self) -> str:
        """A directory standing for the image's /venv/bin: ``python`` is this interpreter."""
        if self._bin_dir is None:
            self._bin_dir = tempfile.mkdtemp(prefix="fake-image-bin-")
            python = Path(self._bin_dir) / "python"  # a script: a symlink would lose the venv
            python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            python.chmod(0o755)
        return self._bin_dir

    def _watch(self, inst: _Inst, handle: ContainerHandle) -> None:
        code = handle.wait()
        with self._cond:
            if (inst.handle is handle and not inst.destroyed and inst.actual_status == "running"
                    and inst.intended_status == "running"):
                inst.actual_status = "exited"
                inst.status_msg = f"container exited with code {code}"
            self._cond.notify_all()

    def _stop_container(self, inst: _Inst) -> None:
        handle, inst.handle, inst.ports = inst.handle, None, None
        if handle is None or handle.poll() is not None:
            return
        handle.terminate()

        def kill_if_alive() -> None:
            if handle.poll() is None:
                handle.kill()

        timer = threading.Timer(self.kill_grace_s, kill_if_alive)
        timer.daemon = True
        timer.start()

    def _bill(self, now: float) -> None:
        elapsed_h = max(0.0, now - self._billed_at) / 3600.0
        self._billed_at = max(self._billed_at, now)
        for inst in self._insts.values():
            if inst.destroyed or inst.offline:
                continue
            rate = inst.offer["storage_cost"] * float(inst.body.get("disk") or 0) / 720.0
            if inst.actual_status == "running":
                rate += self._gpu_price(inst)
            self.credit -= rate * elapsed_h
        if self.credit <= 0:  # Vast.ai stops (not destroys) everything at zero credit
            for inst in self._insts.values():
                if not inst.destroyed and inst.intended_status == "running":
                    inst.intended_status = inst.actual_status = "stopped"
                    inst.status_msg = "stopped: account credit exhausted"
                    self._stop_container(inst)

    @staticmethod
    def _gpu_price(inst: _Inst) -> float:
        price = inst.body.get("price")
        return float(price) if price is not None else float(inst.offer["dph_base"])

    # ---- test controls ---------------------------------------------------------------------

    def add_offer(self, gpu_name: str = "RTX 4090", **fields: Any) -> int:
        with self._cond:
            offer_id = next(self._offer_ids)
            machine_id = next(self._machine_ids)
            now = self.now()
            offer: dict[str, Any] = {
                "id": offer_id, "ask_contract_id": offer_id, "bundle_id": offer_id + 5_000_000,
                "bundled_results": None, "machine_id": machine_id, "host_id": 300 + machine_id,
                "num_gpus": 1, "gpu_name": gpu_name, "gpu_frac": 1.0, "storage_cost": 0.15,
                "verification": "verified", "vericode": 1, "rentable": True, "rented": False,
                "external": False, "direct_port_count": 20, "geolocation": "Oregon, US",
                "disk_space": 500.0, "score": 100.0, "duration": 30 * 86400.0,
                "start_date": now, "end_date": now + 30 * 86400.0, "cpu_cores_effective": 16.0,
                "cpu_ram": 64000, "cpu_arch": "amd64", "static_ip": True, "is_bid": False,
                "public_ipaddr": f"203.0.113.{machine_id % 250 + 1}", "os_version": "22.04",
                **_GPU_PRESETS.get(gpu_name, _GPU_PRESETS["RTX 4090"])}
            offer.update(fields)
            offer["gpu_total_ram"] = offer["gpu_ram"] * offer["num_gpus"]
            offer["reliability2"] = offer["reliability"]
            major, *rest = [int(p) for p in str(offer["driver_version"]).split(".")]
            offer["driver_vers"] = int(f"{major}{''.join(f'{p:03d}' for p in rest)}")
            self._offers[offer_id] = offer
            return offer_id

    def steal_offer(self, offer_id: int, *, status: int = 404) -> None:
        """Someone else rents it between our search and our create (404 or 410)."""
        with self._cond:
            self._offers[offer_id].update(rented=True, rentable=False)
            self._stolen[offer_id] = status

    def inject(self, endpoint: str, status: int, body: Mapping[str, Any] | str, *,
               times: int = 1, headers: Mapping[str, str] | None = None,
               content_type: str | None = None) -> None:
        """The next ``times`` calls to ``endpoint`` ("*": any) answer this instead."""
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        ctype = content_type or ("text/plain" if isinstance(body, str) else "application/json")
        with self._cond:
            self._faults.append(_Fault(endpoint, status, raw, ctype, dict(headers or {}), times))

    def rate_limit_burst(self, n: int, *, endpoint: str = "*", text: bool = True,
                         retry_after: float | None = None) -> None:
        body: Mapping[str, Any] | str = ("API requests too frequent" if text else
                                         {"detail": "API requests too frequent endpoint "
                                                    "threshold=2.0"})
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        self.inject(endpoint, 429, body, times=n, headers=headers)

    def server_errors(self, n: int, *, status: int = 503, endpoint: str = "*") -> None:
        if status == 503:
            self.inject(endpoint, 503, {"success": False, "error": "service_unavailable",
                                        "msg": "Service temporarily unavailable"}, times=n)
        else:  # a gateway's page, not JSON
            self.inject(endpoint, status, f"<html><body><h1>{status}</h1></body></html>",
                        times=n, content_type="text/html")

    def drop_next_create(self, mode: Literal["drop", "500"] = "drop") -> None:
        """The next create happens, but its answer is lost: the connection closes with no
        response ("drop") or a 500 comes back ("500")."""
        with self._cond:
            self._create_outcomes.append((mode, {}))

    def reject_next_create(self, error: str = "invalid_args",
                           msg: str = "error 400/3467: Invalid args") -> None:
        """The next create answers 200 with ``success: false`` and creates nothing."""
        with self._cond:
            self._create_outcomes.append(("reject", {"error": error, "msg": msg}))

    def fail_next_boot(self, fault: BootFault) -> None:
        with self._cond:
            self._boot_faults.append(fault)

    def set_status(self, instance_id: int, *, actual_status: str | None = _UNSET,
                   status_msg: str | None = _UNSET, intended_status: str = _UNSET) -> None:
        with self._cond:
            inst = self._insts[instance_id]
            if actual_status is not _UNSET:
                inst.actual_status = actual_status
                if actual_status != "running":
                    self._stop_container(inst)
            if status_msg is not _UNSET:
                inst.status_msg = status_msg
            if intended_status is not _UNSET:
                inst.intended_status = intended_status
            inst.stuck = True
            self._cond.notify_all()

    def outbid(self, instance_id: int) -> None:
        """Someone bid more for an interruptible instance's machine: Vast.ai stops it (does not
        destroy it: its storage keeps billing) and its container gets a ``docker stop``."""
        with self._cond:
            inst = self._insts[instance_id]
            if inst.body.get("price") is None:
                raise ValueError("only an interruptible (bid) instance can be outbid")
            inst.intended_status = inst.actual_status = "stopped"
            inst.stuck = True
            self._stop_container(inst)
            self._cond.notify_all()

    def set_offline(self, instance_id: int, offline: bool = True) -> None:
        """Host disconnected: shown as ``offline``, the stored status kept; no billing."""
        with self._cond:
            self._insts[instance_id].offline = offline
            self._cond.notify_all()

    def instances(self, *, include_destroyed: bool = False) -> list[FakeInstance]:
        with self._cond:
            return [FakeInstance(
                id=i.id, offer_id=i.offer["id"], machine_id=i.offer["machine_id"],
                label=str(i.body.get("label") or ""), actual_status=i.actual_status,
                intended_status=i.intended_status, next_state=i.next_state,
                status_msg=i.status_msg, env=dict(i.env), container_env=dict(i.container_env),
                api_key=i.api_key,
                alive=i.handle is not None and i.handle.poll() is None, destroyed=i.destroyed)
                for i in self._insts.values() if include_destroyed or not i.destroyed]

    def alive_count(self) -> int:
        with self._cond:
            return sum(1 for i in self._insts.values()
                       if i.handle is not None and i.handle.poll() is None)

    def burn_rate(self) -> float:
        """Dollars per hour of every instance not destroyed, as their rows show dph_total."""
        with self._cond:
            return sum(self._render(i)["dph_total"] for i in self._insts.values()
                       if not i.destroyed)

    @property
    def create_requests(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.body for r in self._requests if r.endpoint == "create"]

    def requests(self, endpoint: str | None = None) -> list[Recorded]:
        with self._cond:
            return [r for r in self._requests if endpoint in (None, r.endpoint)]

    def wait_for(self, predicate: Callable[[FakeVast], bool], timeout_s: float) -> None:
        """Block until ``predicate(self)`` holds (re-checked on every change); TimeoutError
        after ``timeout_s``. From async tests: ``await asyncio.to_thread(fake.wait_for, ...)``."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout_s):
                raise TimeoutError(f"fake Vast.ai: condition not met within {timeout_s}s")

    # ---- HTTP ------------------------------------------------------------------------------

    def handle(self, ex: _Exchange) -> None:
        """Answer one request: decided under the lock, written to the socket outside it."""
        headers: Mapping[str, str] = {}
        with self._cond:
            try:
                if self._closed:
                    raise _bad(503, "service_unavailable", "shutting down")
                self._route(ex)
                self._authorize(ex)
                self._tick()
                ex.body = self._parse_body(ex)
                self._rate_limit(ex)
                self._injected(ex)
                status, payload = getattr(self, f"_do_{ex.endpoint}")(ex)
                body, ctype = json.dumps(payload).encode(), "application/json"
            except _Bad as bad:
                status, body, ctype = bad.status, json.dumps(bad.body).encode(), "application/json"
            except _Raw as raw:
                status, body, ctype, headers = raw.status, raw.body, raw.content_type, raw.headers
            self._record(ex, status)
            self._cond.notify_all()
        h = ex.handler
        if status == 0:  # drop: close the connection without an answer
            h.close_connection = True
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _record(self, ex: _Exchange, status: int) -> None:
        with self._cond:
            self._requests.append(Recorded(ex.method, ex.path, ex.endpoint, status,
                                           ex.authorization, ex.body))

    _ROUTES = (
        ("POST", re.compile(r"/api/v0/bundles/?"), "search"),
        ("PUT", re.compile(r"/api/v0/asks/(\d+)/?"), "create"),
        ("GET", re.compile(r"/api/v1/instances/?"), "list"),
        ("GET", re.compile(r"/api/v0/instances/?"), "list_v0"),
        ("GET", re.compile(r"/api/v0/instances/(\d+)/?"), "show"),
        ("DELETE", re.compile(r"/api/v0/instances/(\d+)/?"), "destroy"),
        ("PUT", re.compile(r"/api/v0/instances/(\d+)/?"), "manage"),
        ("GET", re.compile(r"/api/v0/users/current/?"), "user"),
    )

    def _route(self, ex: _Exchange) -> None:
        path = urlsplit(ex.path).path
        for method, pattern, endpoint in self._ROUTES:
            if (m := pattern.fullmatch(path)) and method == ex.method:
                ex.endpoint = endpoint
                ex.extra["id"] = int(m.group(1)) if m.groups() else None
                return
        raise _bad(404, "not_found", f"no such endpoint: {ex.method} {path}")

    def _authorize(self, ex: _Exchange) -> None:
        auth = ex.handler.headers.get("Authorization", "")
        ex.authorization = auth
        key = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ex.query.get(
            "api_key")
        if not key:
            raise _bad(403, "auth_error", "This action requires login.")
        if secrets.compare_digest(key, self.api_key):
            ex.identity = "account"
            return
        owner = next((i for i in self._insts.values() if i.api_key == key), None)
        if owner is None:
            raise _bad(self.bad_key_status, "auth_error", "Invalid user key")
        ex.identity = ("instance", owner.id)
        if ex.endpoint not in ("show", "destroy", "manage") or ex.extra["id"] != owner.id:
            raise _bad(403, "not_authorized", "This key can only manage its own instance.")

    def _rate_limit(self, ex: _Exchange) -> None:
        interval_s = self.min_intervals_s.get(ex.endpoint, 0.0)
        if interval_s <= 0:
            return
        key, now = (ex.identity, ex.endpoint), self.now()
        last = self._last_call.get(key)
        if last is not None and now - last < interval_s - 1e-6:  # float noise on epoch times
            if self.rate_limit_text:
                raise _Raw(429, b"API requests too frequent", "text/plain")
            raise _bad(429, "rate_limit_exceeded",
                       f"API requests too frequent endpoint threshold={interval_s}")
        self._last_call[key] = now

    def _injected(self, ex: _Exchange) -> None:
        for fault in self._faults:
            if fault.times > 0 and fault.endpoint in ("*", ex.endpoint):
                fault.times -= 1
                raise _Raw(fault.status, fault.body, fault.content_type, fault.headers)

    def _parse_body(self, ex: _Exchange) -> Any:
        raw = ex.extra.pop("raw", b"")
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise _Bad(400, {"error": "invalid_request", "msg": "Invalid json body"}) from None

    # ---- endpoints -------------------------------------------------------------------------

    def _do_search(self, ex: _Exchange) -> tuple[int, Any]:
        return 200, {"offers": _search(self._offers.values(), ex.body)}

    def _do_create(self, ex: _Exchange) -> tuple[int, Any]:
        body, offer_id = ex.body, ex.extra["id"]
        env = _validate_create(body, self.accept_string_env)
        offer = self._offers.get(offer_id)
        if offer_id in self._stolen and self._stolen[offer_id] == 410:
            raise _bad(410, "no_such_ask", f"error 410/3907: no_such_ask Instance type "
                       f"{offer_id} is no longer available.", ask_id=offer_id)
        if offer is None or offer["rented"] or not offer["rentable"]:
            raise _bad(404, "invalid_args", f"error 404/3603: no_such_ask Instance type by id "
                       f"{offer_id} is not available.", ask_id=offer_id)
        outcome, detail = (self._create_outcomes.popleft() if self._create_outcomes
                           else ("ok", {}))
        if outcome == "reject":
            return 200, {"success": False, **detail}
        offer.update(rented=True, rentable=False)
        now = self.now()
        inst = _Inst(id=next(self._inst_ids), offer=dict(offer), body=body, env=env,
                     api_key=secrets.token_hex(32), created_at=now, stage_at=now,
                     fault=self._boot_faults.popleft() if self._boot_faults else None)
        self._insts[inst.id] = inst
        if outcome == "drop":
            return 0, None
        if outcome == "500":
            return 500, {"success": False, "error": "server_error", "msg": "Internal error"}
        return 200, {"success": True, "new_contract": inst.id,
                     "instance_api_key": inst.api_key}

    def _visible(self) -> list[_Inst]:
        return [i for i in self._insts.values() if not i.gone]

    def _observe(self, insts: Iterable[_Inst]) -> list[dict[str, Any]]:
        rows = []
        for inst in insts:
            rows.append(self._render(inst))
            if inst.destroyed:
                inst.linger_views -= 1
            elif self.progress == "observe":
                self._step(inst)
        return rows

    def _do_list(self, ex: _Exchange) -> tuple[int, Any]:
        visible = {i.id: i for i in self._visible()}
        rows = [self._render(i) for i in visible.values()]  # rendering alone observes nothing
        page, next_token, found = _list_page(rows, ex.query)
        return 200, {"success": True, "instances_found": len(found),
                     "total_instances": len(rows),
                     "label_counts": dict(Counter(r["label"] or "" for r in found)),
                     "next_token": next_token,
                     "instances": self._observe(visible[r["id"]] for r in page)}

    def _do_list_v0(self, ex: _Exchange) -> tuple[int, Any]:
        rows = self._observe(self._visible())
        return 200, {"instances": rows, "instances_found": len(rows)}

    def _do_show(self, ex: _Exchange) -> tuple[int, Any]:
        inst = self._insts.get(ex.extra["id"])
        if inst is None or inst.gone:
            if self.gone_as_404:
                raise _bad(404, "not_found", "Instance not found")
            return 200, {"instances": None}
        return 200, {"instances": self._observe([inst])[0]}

    def _do_destroy(self, ex: _Exchange) -> tuple[int, Any]:
        inst = self._insts.get(ex.extra["id"])
        if inst is None or inst.destroyed:
            raise _bad(404, "not_found", "Instance not found")
        inst.destroyed, inst.next_state = True, "unloaded"
        inst.linger_views = self.destroy_linger_views
        self._stop_container(inst)
        return 200, {"success": True}

    def _do_manage(self, ex: _Exchange) -> tuple[int, Any]:
        inst = self._insts.get(ex.extra["id"])
        if inst is None or inst.destroyed:
            raise _bad(404, "no_such_instance", f"Instance {ex.extra['id']} not found.")
        body = ex.body if isinstance(ex.body, dict) else {}
        if "label" in body:
            if len(str(body["label"])) > 1024:
                raise _bad(400, "label_too_long", "label too long")
            inst.body["label"] = body["label"]
        if body.get("state") == "stopped":
            inst.intended_status = inst.actual_status = "stopped"
            self._stop_container(inst)
        elif body.get("state") == "running" and inst.intended_status != "running":
            inst.intended_status, inst.actual_status, inst.stuck = "running", None, False
            inst.stage, inst.stage_at = 0, self.now()
        return 200, {"success": True}

    def _do_user(self, ex: _Exchange) -> tuple[int, Any]:
        return 200, {"id": 4242, "email": "fleet@example.com", "username": "fleet",
                     "fullname": "Fleet Test", "credit": round(self.credit, 6), "balance": 0.0,
                     "balance_threshold": 0.0, "balance_threshold_enabled": False,
                     "has_billing": True, "email_verified": True, "ssh_key": "",
                     "host_agreement_accepted": False}

    def _render(self, inst: _Inst) -> dict[str, Any]:
        o, body = inst.offer, inst.body
        storage_h = o["storage_cost"] * float(body.get("disk") or 0) / 720.0
        return {
            "id": inst.id, "machine_id": o["machine_id"], "host_id": o["host_id"],
            "bundle_id": o["bundle_id"],
            "actual_status": "offline" if inst.offline else inst.actual_status,
            "intended_status": inst.intended_status, "cur_state": inst.intended_status,
            "next_state": inst.next_state,
            "status_msg": None if inst.status_msg is None else inst.status_msg + "\n",
            "label": body.get("label"), "image_uuid": body.get("image"),
            "image_args": body.get("args") or [], "image_runtype": body.get("runtype") or "ssh",
            "onstart": body.get("onstart"), "extra_env": [[k, v] for k, v in inst.env.items()],
            "public_ipaddr": o["public_ipaddr"] + "\n", "local_ipaddrs": "10.2.0.7 172.17.0.1 \n",
            "ssh_host": "ssh5.vast.ai", "ssh_port": 20_000 + inst.id % 10_000, "ssh_idx": "5",
            "ports": inst.ports, "start_date": inst.created_at, "end_date": o["end_date"],
            "uptime_mins": None, "num_gpus": o["num_gpus"], "gpu_name": o["gpu_name"],
            "gpu_ram": o["gpu_ram"], "gpu_totalram": o["gpu_total_ram"], "gpu_util": None,
            "dph_base": o["dph_base"], "dph_total": self._gpu_price(inst) + storage_h,
            "is_bid": body.get("price") is not None, "min_bid": o["min_bid"],
            "storage_cost": o["storage_cost"], "reliability2": o["reliability"],
            "verification": o["verification"], "geolocation": o["geolocation"],
            "disk_space": body.get("disk"), "cuda_max_good": o["cuda_max_good"],
            "driver_version": o["driver_version"], "inet_up": o["inet_up"],
            "inet_down": o["inet_down"], "template_id": None, "template_hash_id": None,
            "direct_port_start": -1, "direct_port_end": -1, "direct_port_count": 0}


class _Raw(Exception):
    def __init__(self, status: int, body: bytes, content_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = dict(headers or {})


def _validate_create(body: Any, accept_string_env: bool) -> dict[str, str]:
    """The create body's checks, in Vast.ai's words; returns the env as a dict."""
    if not isinstance(body, dict):
        raise _Bad(400, {"error": "invalid_request", "msg": "Invalid json body"})
    if not body.get("image") and not body.get("template_hash_id"):
        raise _bad(400, "invalid_args", "error 400/3467: Invalid args: image is required")
    disk = body.get("disk", 8)
    if not isinstance(disk, int | float) or disk < 8:
        raise _bad(400, "invalid_args", "error 400/3467: Invalid args: disk must be >= 8 GB")
    env = body.get("env") or {}
    if isinstance(env, str) and accept_string_env:
        env = dict(re.findall(r"-e (\w+)=(\S*)", env))
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise _bad(400, "invalid_args", "error 400/3467: Invalid args: env must be an object "
                   "of strings, e.g. {\"VAR1\": \"value1\"}")
    if any(len(v) > 256 for v in env.values()):
        raise _bad(400, "invalid_args", "error 400/3467: Invalid args: env value too long")
    runtype = body.get("runtype")
    if runtype is not None and not (set(str(runtype).split()) <= _RUNTYPES and runtype.strip()):
        raise _bad(400, "invalid_args", f"error 400/3467: Invalid args: runtype {runtype}")
    if len(str(body.get("label") or "")) > 256:
        raise _bad(400, "invalid_args", "error 400/3467: Invalid args: label too long")
    price = body.get("price")
    if price is not None and not (isinstance(price, int | float) and 0.001 <= price <= 128):
        raise _bad(400, "invalid_price", "error 400/3471: price must be within 0.001..128")
    return env


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeVast

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle's algorithm and the
        # client's delayed ACK stall every keep-alive exchange by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        ex = _Exchange(self, method, self.path, query)
        ex.extra["raw"] = self.rfile.read(length) if length else b""
        self.fake.handle(ex)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---- the query languages: offer search (body) and paginated lists (query params) ----------


def _query_error(msg: str) -> _Bad:
    return _Bad(400, {"error": "invalid_request", "msg": f"Error in query parameters: {msg}"})


def _coerce(actual: Any, value: Any) -> Any:
    """Vast.ai's CLI sends numbers and bools as strings; the server compares them as such."""
    if isinstance(value, str):
        if isinstance(actual, bool) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(actual, int | float) and not isinstance(actual, bool):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op in ("in", "notin"):
        if not isinstance(expected, list):
            raise _query_error(f"{op} takes a list")
        hit = actual in [_coerce(actual, v) for v in expected]
        return hit if op == "in" else not hit
    value = _coerce(actual, expected)
    if op == "eq":
        return bool(actual == value)
    if op == "neq":
        return bool(actual != value)
    if op not in ("gt", "gte", "lt", "lte"):
        raise _query_error(f"invalid operator {op}")
    if actual is None or value is None:
        return False
    try:
        return bool({"gt": actual > value, "gte": actual >= value, "lt": actual < value,
                     "lte": actual <= value}[op])
    except TypeError:
        return False


def _matches(row: Mapping[str, Any], col: str, cond: Any) -> bool:
    if not isinstance(cond, dict):
        raise _query_error(f"{col} takes an operator object like {{\"eq\": value}}")
    if col not in row:
        raise _query_error(f"{col} is not a valid search key")
    actual = row[col]
    if col == "geolocation" and isinstance(actual, str):
        actual = actual.strip()[-2:]  # filters use the 2-letter country code
    return all(_compare(actual, op, value) for op, value in cond.items())


def _search(offers: Iterable[dict[str, Any]], q: Any) -> list[dict[str, Any]]:
    if not isinstance(q, dict):
        raise _Bad(400, {"error": "invalid_request", "msg": "Invalid json body"})
    kind = q.get("type", "on-demand")
    price_key = {"on-demand": "dph_base", "ondemand": "dph_base", "reserved": "dph_base",
                 "bid": "min_bid", "interruptible": "min_bid"}.get(kind)
    if price_key is None:
        raise _query_error(f"invalid type {kind}")
    try:
        storage_gb = float(q.get("allocated_storage", 5.0))
        limit = int(q.get("limit", 64))
    except (TypeError, ValueError):
        raise _query_error("allocated_storage and limit must be numbers") from None
    filters: list[tuple[str, Any]] = []
    for key, cond in q.items():
        if key in _SEARCH_CONTROL:
            continue
        if key == "target_reliability":
            key, cond = "reliability", {"gte": cond}
        filters.append((_SEARCH_ALIASES.get(key, str(key)), cond))
    rows = []
    for offer in offers:
        row = dict(offer, storage_total_cost=offer["storage_cost"] * storage_gb / 720.0,
                   verified=offer["verification"] == "verified",
                   datacenter=offer["hosting_type"] == 1, is_bid=price_key == "min_bid")
        row["dph_total"] = offer[price_key] * offer["num_gpus"] + row["storage_total_cost"]
        if row["disk_space"] >= storage_gb and all(_matches(row, c, f) for c, f in filters):
            rows.append(row)
    order = q.get("order", [["score", "desc"]])
    if not isinstance(order, list) or not all(
            isinstance(o, list) and len(o) == 2 and o[1] in ("asc", "desc") for o in order):
        raise _query_error("order must be a list of [field, \"asc\"|\"desc\"]")
    for col, direction in reversed(order):
        if rows and col not in rows[0]:
            raise _query_error(f"{col} is not a valid sort key")
        rows.sort(key=functools.partial(_sort_key, col), reverse=direction == "desc")
    for row in rows:
        del row["verified"], row["datacenter"]
    return rows[:limit]


def _sort_key(col: str, row: Mapping[str, Any]) -> tuple[bool, Any]:
    return row[col] is None, row[col]


def _json_param(query: Mapping[str, str], name: str, default: Any) -> Any:
    if name not in query:
        return default
    try:
        return json.loads(query[name])
    except ValueError:
        raise _query_error(f"{name} is not valid JSON") from None


def _cmp_values(a: Any, b: Any) -> int:
    if a == b:
        return 0
    if a is None or b is None:
        return -1 if a is None else 1
    try:
        return -1 if a < b else 1
    except TypeError:
        return -1 if str(a) < str(b) else 1


def _list_page(rows: list[dict[str, Any]], query: Mapping[str, str]
               ) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
    """One page of ``GET /api/v1/instances/``: (page, next_token, every row that matched)."""
    filters = _json_param(query, "select_filters", {})
    order = _json_param(query, "order_by", [{"col": "id", "dir": "asc"}])
    limit = _json_param(query, "limit", 25)
    if not isinstance(filters, dict) or any(col not in _LIST_COLUMNS for col in filters):
        bad = next((c for c in filters if c not in _LIST_COLUMNS), "select_filters")
        raise _query_error(f"{bad} is not a valid search key")
    if not isinstance(order, list) or not all(
            isinstance(o, dict) and o.get("col") in _LIST_COLUMNS
            and o.get("dir", "asc") in ("asc", "desc") for o in order):
        raise _query_error("order_by must be a list of {\"col\": column, \"dir\": ...}")
    if not isinstance(limit, int):
        raise _query_error("limit must be an integer")
    limit = 5 if limit <= 0 else min(limit, 25)
    cols = [(o["col"], o.get("dir", "asc")) for o in order]
    if "id" not in [c for c, _ in cols]:
        cols.append(("id", "asc"))  # the tiebreaker, always

    def key(row: Mapping[str, Any]) -> list[Any]:
        return [row[c] for c, _ in cols]

    def cmp(a: list[Any], b: list[Any]) -> int:
        for x, y, (_, direction) in zip(a, b, cols, strict=True):
            if c := _cmp_values(x, y):
                return c if direction == "asc" else -c
        return 0

    found = [r for r in rows if all(_matches(r, c, f) for c, f in filters.items())]
    found.sort(key=lambda r: functools.cmp_to_key(cmp)(key(r)))
    rest = found
    if token := query.get("after_token"):
        try:
            after = json.loads(base64.b64decode(token, validate=True))["values"]
            if not isinstance(after, list) or len(after) != len(cols):
                raise ValueError(token)
        except (ValueError, KeyError, TypeError):
            raise _Bad(400, {"error": "invalid_token", "msg": "Invalid after_token"}) from None
        rest = [r for r in found if cmp(key(r), after) > 0]
    page = rest[:limit]
    next_token = _token(key(page[-1])) if len(rest) > limit else None
    return page, next_token, found


def _token(values: list[Any]) -> str:
    return base64.b64encode(json.dumps({"values": values}).encode()).decode()


def booted_instance(fake: FakeVast, label: str = "vf-self") -> tuple[int, str]:
    """A running instance made as the platform would, without a provider: (its id, the
    container's own API key, which can only stop or destroy it)."""
    offer_id = fake.add_offer("RTX 4090")
    created = httpx.put(f"{fake.url}/api/v0/asks/{offer_id}/",
                        headers={"Authorization": f"Bearer {fake.api_key}"},
                        json={"image": "vidfleet/agent:t", "label": label, "env": {},
                              "disk": 16, "runtype": "args"}).json()
    instance_id = int(created["new_contract"])
    fake.boot(instance_id)
    return instance_id, str(created["instance_api_key"])
