"""The controller's Prometheus figures: a real Prometheus server scrapes ``vidfleet up``'s
controller during a real job and reads the job counter, the instance gauge and the encoder
through its query API; and the figures' labels stay bounded whatever an agent sends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from broker.events import Failed, JobError, OutputInfo, Succeeded, Timings, encode_event
from broker.fleet import FleetInstance, FleetSummary
from broker.heartbeats import Heartbeat
from broker.jobs import CaptionJob
from client.api import Client
from client.sample import make_sample
from client.stack import Stack, StackOptions
from controller.metrics import Metrics
from tests.prometheus import free_port, prometheus


def _succeeded(job_id: str, *, cached: bool = False, total_s: float = 4.0) -> bytes:
    return encode_event(Succeeded(
        job_id=job_id, at=1.0, tenant="t", operation="caption", agent_id="a", attempt=1,
        encoder="libx264", cached=cached,
        output=OutputInfo(bucket="results-t", name=f"{job_id}/1/out.mp4", size_bytes=1,
                          sha256="0" * 64, duration_s=1.0, width=2, height=2,
                          video_codec="h264", container="mp4"),
        timings=Timings(queue_wait_s=7.0, fetch_s=0.1, validate_s=0.1, encode_s=3.0,
                        upload_s=0.1, total_s=total_s)))


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_job_events_are_counted_by_operation_and_outcome() -> None:
    metrics = Metrics()
    # The queued event is the server's republish of the job: its headers, no body.
    metrics.observe_event("events.t.j.queued.js", {
        "Nats-Subject": "jobs.t.caption.j", "Nats-Sequence": "1",
        "Nats-Time-Stamp": "2026-12-03T06:00:00.123456789Z"}, b"")
    metrics.observe_event("events.t.j.succeeded.c", None, _succeeded("j", total_s=4.0))
    metrics.observe_event("events.t.k.succeeded.c", None, _succeeded("k", cached=True))
    metrics.observe_event("events.t.j.progress.c", None, b"not even decoded")
    metrics.observe_event("events.t.x.failed.c", None, b"{not json")  # skipped, not raised
    metrics.observe_event("events.t.x.queued.js", {}, b"")  # no job headers: skipped
    assert _sample(metrics, "vidfleet_jobs_total", operation="caption", outcome="queued",
                   cached="false") == 1
    assert _sample(metrics, "vidfleet_jobs_total", operation="caption", outcome="succeeded",
                   cached="false") == 1
    assert _sample(metrics, "vidfleet_jobs_total", operation="caption", outcome="succeeded",
                   cached="true") == 1
    # A cached result took no machine time: it is not a duration or a wait.
    assert _sample(metrics, "vidfleet_job_duration_seconds_count", operation="caption") == 1
    assert _sample(metrics, "vidfleet_job_duration_seconds_sum", operation="caption") == 4.0
    assert _sample(metrics, "vidfleet_queue_wait_seconds_bucket", operation="caption",
                   le="10.0") == 1


def test_labels_an_agent_controls_stay_bounded() -> None:
    """Operations and error codes reach the controller from agents' reports: a stream of
    made-up values must not grow Prometheus's series without bound."""
    metrics = Metrics()
    for n in range(200):
        metrics.observe_event(f"events.t.j{n}.failed.c", None, encode_event(Failed(
            job_id=f"j{n}", at=1.0, tenant="t", agent_id="a", attempt=1,
            operation=f"op{n}", error=JobError(code=f"code_{n}", message="m"))))
    metrics.observe_event("events.t.x.failed.c", None, encode_event(Failed(
        job_id="x", at=1.0, tenant="t", agent_id="a", attempt=1, operation="caption",
        error=JobError(code="'; DROP TABLE {x=\"1\"}", message="m"))))
    text = generate_latest(metrics.registry).decode()
    failures = [line for line in text.splitlines()
                if line.startswith("vidfleet_job_failures_total{")]
    assert 60 <= len(failures) <= 65 + 1, len(failures)
    assert 'operation="other"' in text and 'code="other"' in text
    assert "DROP" not in text


async def test_a_tick_sets_the_fleet_gauges() -> None:
    metrics = Metrics()
    records = [FleetInstance(label=f"vf-{n}", provider="vast", state=state, launched_at=0.0,
                             price_per_hour=0.3, machine_id=n)
               for n, state in enumerate(["booting", "serving", "serving", "draining"])]
    beats = [Heartbeat(agent_id="vf-1", state="busy", at=1.0, encoder="h264_nvenc",
                       jobs_done=3),
             Heartbeat(agent_id="vf-2", state="idle", at=1.0, encoder="libx264", jobs_done=1)]
    summary = FleetSummary(at=5.0, provider="vast", queued_jobs=7, running_jobs=2,
                           backlog_work_s=420.0, spend_per_hour=0.9, spent_today=3.5,
                           day="2026-12-03", max_spend_per_hour=5.0, max_spend_per_day=50.0,
                           alarms=["a", "b"], billed_today=3.6)
    await metrics.observe_tick(summary=summary, records=records, beats=beats, now=5.0)
    assert [_sample(metrics, "vidfleet_instances", state=s)
            for s in ("launching", "booting", "serving", "draining", "destroying")] == [
        0, 1, 2, 1, 0]
    assert _sample(metrics, "vidfleet_agents", state="busy", encoder="h264_nvenc") == 1
    assert _sample(metrics, "vidfleet_agents", state="idle", encoder="libx264") == 1
    assert _sample(metrics, "vidfleet_agent_jobs_done") == 4
    assert _sample(metrics, "vidfleet_backlog_jobs", state="queued") == 7
    assert _sample(metrics, "vidfleet_backlog_work_seconds") == 420
    assert (_sample(metrics, "vidfleet_spent_today_usd"),
            _sample(metrics, "vidfleet_billed_today_usd"),
            _sample(metrics, "vidfleet_max_spend_per_day_usd")) == (3.5, 3.6, 50.0)
    assert _sample(metrics, "vidfleet_alarms") == 2
    assert _sample(metrics, "vidfleet_last_tick_timestamp_seconds") == 5.0
    # The next tick's agents replace the last's: a gone agent is no longer counted.
    await metrics.observe_tick(summary=summary, records=[], beats=[], now=6.0)
    assert _sample(metrics, "vidfleet_agents", state="busy", encoder="h264_nvenc") is None
    assert _sample(metrics, "vidfleet_instances", state="serving") == 0


def test_an_orphan_is_counted_once_however_long_it_takes_to_go() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.orphan_found("vf-x")
    metrics.orphan_found("vf-y")
    assert _sample(metrics, "vidfleet_orphans_found_total") == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_prometheus_scrapes_the_controller_through_a_real_job(tmp_path: Path) -> None:
    port = free_port()
    video, srt = await asyncio.to_thread(make_sample, tmp_path / "media", 2, "320x180")
    options = StackOptions(data_dir=tmp_path / "data", port=0, max_agents=1,
                           env={"VIDFLEET_METRICS_LISTEN": f"127.0.0.1:{port}"})
    async with prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as prom, \
            Stack(options) as stack:
        async with await Client.connect(stack.url, creds_file=stack.creds_file) as vf:
            job = CaptionJob(video=await vf.upload_input(video),
                             srt=await vf.upload_input(srt), cache=False)
            await vf.submit(job, job_id="scraped")
            result = await vf.result("scraped", timeout_s=120)
        assert isinstance(result, Succeeded)
        assert await prom.value_when('up{job="vidfleet-controller"}', lambda v: v == 1) == 1
        assert await prom.value_when(
            'sum(vidfleet_jobs_total{operation="caption", outcome="succeeded"})',
            lambda v: v >= 1) == 1
        assert await prom.value_when(
            'sum(vidfleet_jobs_total{operation="caption", outcome="queued"})',
            lambda v: v >= 1) == 1
        # The agent that ran it idles on (the idle timeout): one serving machine.
        assert await prom.value_when('vidfleet_instances{state="serving"}',
                                     lambda v: v >= 1) == 1
        # The encoder that ran, as the agent's heartbeat says (libx264 here, no NVENC).
        assert await prom.value_when(
            f'sum(vidfleet_agents{{encoder="{result.encoder}"}})', lambda v: v >= 1) == 1
        assert await prom.value_when(
            'vidfleet_job_duration_seconds_count{operation="caption"}',
            lambda v: v >= 1) == 1
        rules = await prom.rules()
        assert len(rules) == 10 and {r["health"] for r in rules} == {"ok"}
        firing = await prom.query('ALERTS{alertstate="firing"}')
        assert firing == []  # a healthy run raises nothing
        # /metrics has no auth (docs/security.md): no tenant, job, agent or secret in it.
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert "vidfleet_jobs_total" in text
        creds = stack.creds_file.read_text() if stack.creds_file else ""
        seed = next(line for line in creds.splitlines() if line.startswith("SU"))
        for private in ("scraped", "default", result.agent_id, seed, "SU"):
            assert private not in text, private
