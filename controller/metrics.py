"""The controller's Prometheus figures, served on ``/metrics`` (``VIDFLEET_METRICS_LISTEN``).

Three sources, none of them a port on a machine we rent: the controller's own tick (backlog,
instances, spend against the caps, alarms), what it does to machines (boot times, failed rents,
orphans) and the job events it publishes for every job (a core subscription to
``events.*.*.*.*``: outcomes, durations, queue waits). Agents' figures arrive in their
heartbeats and are exported here: no agent listens on a port.

Counters start at zero with each controller process (Prometheus's ``rate`` and ``increase``
read a reset as such). Every label value is bounded: operations and error codes outside what a
well-formed event carries read as ``other``, so a misbehaving agent cannot grow the series
without bound.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from broker.config import ConfigError
from broker.events import Cancelled, Failed, Queued, Retrying, Succeeded, event_from_msg
from broker.fleet import FleetInstance, FleetSummary
from broker.heartbeats import Heartbeat
from controller.dead_letters import DeadLetters

__all__ = ["Metrics", "serve"]

_INSTANCE_STATES = ("launching", "booting", "serving", "draining", "destroying")
_AGENT_STATES = ("idle", "busy", "draining", "stopped")
_OUTCOMES = {"succeeded", "failed", "cancelled", "retrying", "queued"}
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,39}")
_MAX_VALUES = 64  # distinct values one label may take before the rest read as "other"
_JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
_WAIT_BUCKETS = (0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
_COUNT_LETTERS_S = 60.0
_BOOT_BUCKETS = (15, 30, 60, 90, 120, 180, 300, 600, 900, 1800)


class _Bounded:
    """Label values as seen, capped: the first ``_MAX_VALUES`` well-formed ones, then other."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not _LABEL.fullmatch(value) or len(self._seen) >= _MAX_VALUES:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    """Every figure the controller exports, in its own registry (so two controllers in one
    process, as in tests, never share a series)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._operation = _Bounded()
        self._code = _Bounded()
        self._encoder = _Bounded()
        self._orphans: set[str] = set()
        self._letters_counted_at = float("-inf")
        self._sub: Subscription | None = None
        self.backlog_jobs = Gauge("vidfleet_backlog_jobs", "Jobs in JOBS not yet finished",
                                  ["state"], registry=r)
        self.backlog_work = Gauge("vidfleet_backlog_work_seconds",
                                  "Estimated GPU-seconds of work queued and running",
                                  registry=r)
        self.instances = Gauge("vidfleet_instances", "Machines on record, by state",
                               ["state"], registry=r)
        self.agents = Gauge("vidfleet_agents",
                            "Agents heard within their heartbeat timeout, by state and encoder",
                            ["state", "encoder"], registry=r)
        self.agent_jobs_done = Gauge("vidfleet_agent_jobs_done",
                                     "Jobs done by the agents now heard (their own count)",
                                     registry=r)
        self.boot = Histogram("vidfleet_boot_seconds",
                              "From the rent to the machine's first heartbeat",
                              buckets=_BOOT_BUCKETS, registry=r)
        self.rent_failures = Counter("vidfleet_rent_failures",
                                     "Rents that gave no serving machine, by reason",
                                     ["reason"], registry=r)
        self.orphans = Counter("vidfleet_orphans_found",
                               "Machines labelled as ours that no record knew (destroyed)",
                               registry=r)
        self.spend_per_hour = Gauge("vidfleet_spend_per_hour_usd",
                                    "The fleet's burn rate now", registry=r)
        self.spent_today = Gauge("vidfleet_spent_today_usd",
                                 "Dollars since UTC midnight as the controller accrues them "
                                 "(what the daily cap is checked against)", registry=r)
        self.billed_today = Gauge("vidfleet_billed_today_usd",
                                  "Dollars since UTC midnight on the provider's own bill, "
                                  "when it tells one; else the accrued figure", registry=r)
        self.max_spend_per_hour = Gauge("vidfleet_max_spend_per_hour_usd",
                                        "The burn-rate cap", registry=r)
        self.max_spend_per_day = Gauge("vidfleet_max_spend_per_day_usd",
                                       "The daily spend cap", registry=r)
        self.alarms = Gauge("vidfleet_alarms", "Alarms raised by the last tick", registry=r)
        self.last_tick = Gauge("vidfleet_last_tick_timestamp_seconds",
                               "When the controller last finished a tick (unix seconds)",
                               registry=r)
        self.tick_failures = Counter("vidfleet_tick_failures",
                                     "Ticks cut short by the bus or the provider", registry=r)
        self.dead_letters = Gauge("vidfleet_dead_letters",
                                  "Jobs failed for good and kept for a retry", registry=r)
        self.jobs = Counter("vidfleet_jobs", "Job events by operation and outcome (queued, "
                            "succeeded, failed, cancelled, retrying); a result served from "
                            "the cache is succeeded with cached=true",
                            ["operation", "outcome", "cached"], registry=r)
        self.job_failures = Counter("vidfleet_job_failures",
                                    "Failed and retried attempts by operation and error code",
                                    ["operation", "code"], registry=r)
        self.job_duration = Histogram("vidfleet_job_duration_seconds",
                                      "A successful attempt, start to result",
                                      ["operation"], buckets=_JOB_BUCKETS, registry=r)
        self.queue_wait = Histogram("vidfleet_queue_wait_seconds",
                                    "From the job's storage in JOBS to its successful "
                                    "attempt's start", ["operation"], buckets=_WAIT_BUCKETS,
                                    registry=r)
        for state in _INSTANCE_STATES:
            self.instances.labels(state)
        for state in ("queued", "running"):
            self.backlog_jobs.labels(state)

    async def follow(self, nc: Client) -> None:
        """Count the job events from now on (core NATS: events published while the controller
        is cut off from the bus are not counted)."""
        self._sub = await nc.subscribe("events.*.*.*.*", cb=self._on_event)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):  # the connection may be gone
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_event(self, msg: Msg) -> None:
        self.observe_event(msg.subject, msg.headers, msg.data)

    def observe_event(self, subject: str, headers: dict[str, str] | None, data: bytes) -> None:
        """One message on ``events.<tenant>.<job>.<kind>.<publisher>`` (the queued event is
        the server's republish: headers, no body). Progress is skipped before decoding;
        anything malformed is skipped."""
        parts = subject.split(".")
        if len(parts) != 5 or parts[3] not in _OUTCOMES:
            return
        try:
            event = event_from_msg(subject, headers, data)
        except ValueError:
            return
        operation = self._operation(getattr(event, "operation", "") or "unknown")
        if isinstance(event, Succeeded):
            self.jobs.labels(operation, "succeeded", str(event.cached).lower()).inc()
            if not event.cached:
                self.job_duration.labels(operation).observe(event.timings.total_s)
                self.queue_wait.labels(operation).observe(event.timings.queue_wait_s)
        elif isinstance(event, Failed | Retrying):
            outcome = "failed" if isinstance(event, Failed) else "retrying"
            self.jobs.labels(operation, outcome, "false").inc()
            self.job_failures.labels(operation, self._code(event.error.code)).inc()
        elif isinstance(event, Cancelled | Queued):
            outcome = "cancelled" if isinstance(event, Cancelled) else "queued"
            self.jobs.labels(operation, outcome, "false").inc()

    async def observe_tick(self, *, summary: FleetSummary, records: Iterable[FleetInstance],
                           beats: Iterable[Heartbeat], letters: DeadLetters | None = None,
                           now: float | None = None) -> None:
        """The figures of one finished tick. ``beats``: the agents heard within their timeout.
        ``letters`` are counted once a minute (a read of every key's header)."""
        if summary.queued_jobs >= 0:
            self.backlog_jobs.labels("queued").set(summary.queued_jobs)
            self.backlog_jobs.labels("running").set(summary.running_jobs)
            self.backlog_work.set(summary.backlog_work_s)
        counts = dict.fromkeys(_INSTANCE_STATES, 0)
        for rec in records:
            counts[rec.state] = counts.get(rec.state, 0) + 1
        for state, n in counts.items():
            self.instances.labels(state).set(n)
        self.agents.clear()
        done = 0
        for beat in beats:
            state = beat.state if beat.state in _AGENT_STATES else "other"
            self.agents.labels(state, self._encoder(beat.encoder or "unknown")).inc()
            done += beat.jobs_done
        self.agent_jobs_done.set(done)
        self.spend_per_hour.set(summary.spend_per_hour)
        self.spent_today.set(summary.spent_today)
        self.billed_today.set(summary.billed_today)
        self.max_spend_per_hour.set(summary.max_spend_per_hour)
        self.max_spend_per_day.set(summary.max_spend_per_day)
        self.alarms.set(len(summary.alarms))
        now = now if now is not None else time.time()
        if letters is not None and now - self._letters_counted_at >= _COUNT_LETTERS_S:
            self._letters_counted_at = now
            self.dead_letters.set(await letters.count())
        self.last_tick.set(now)

    def booted(self, seconds: float) -> None:
        self.boot.observe(max(0.0, seconds))

    def rent_failed(self, reason: str) -> None:
        self.rent_failures.labels(reason).inc()

    def orphan_found(self, label: str) -> None:
        """Counted once per machine, however many ticks it takes to go."""
        if label not in self._orphans:
            self._orphans.add(label)
            self.orphans.inc()


def serve(metrics: Metrics, listen: str) -> tuple[str, Callable[[], None]]:
    """Serve ``/metrics`` on ``listen`` (``host:port``; port 0 picks a free one) from a
    thread; returns the URL it answers on and the function that stops it. ``ConfigError``
    naming the setting if the address is malformed or taken: a controller that cannot be
    watched must not start unnoticed."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"bad configuration in VIDFLEET_METRICS_LISTEN: {listen!r} is not "
                          "host:port (e.g. 127.0.0.1:9464); empty turns metrics off")
    try:
        httpd, _thread = start_http_server(int(port), host.strip("[]"),
                                           registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"VIDFLEET_METRICS_LISTEN={listen}: {exc.strerror or exc}; choose "
                          "another address, or set it empty to serve no metrics") from exc
    bound_host, bound_port = httpd.server_address[:2]
    text = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
    shown = f"[{text}]" if ":" in text else text

    def close() -> None:
        httpd.shutdown()
        httpd.server_close()

    return f"http://{shown}:{bound_port}/metrics", close
