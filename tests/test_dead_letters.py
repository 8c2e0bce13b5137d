"""Dead letters, end to end with auth on: a job that fails for good is kept with its reason,
FFmpeg's last lines (scrubbed) and a copy of its inputs, outside the backlog; a retry runs it
again under its own id as a new attempt, even after its inputs expired; drop forgets it; a
tenant reaches only its own letters."""

from __future__ import annotations

import stat
from pathlib import Path

import nats.errors
import pytest
from nats.js import JetStreamContext

from broker.dead_letters import DeadLetter, decode_dead_letter, kept_input_name
from broker.events import Failed, Progress, Requeued, Started, Succeeded
from broker.jobs import CaptionJob, parse_input_ref
from broker.objects import ObjectMissing, delete_object, object_info
from broker.subjects import (
    DEAD_LETTER_INPUTS_BUCKET,
    DEAD_LETTERS_BUCKET,
    JOBS_STREAM,
    inputs_bucket,
    job_key,
)
from broker.topology import ensure_topology
from client.api import Client
from client.dead_letters import DeadLetterError, NoDeadLetter
from tests.conftest import Outcomes, agent_config, running_agent
from tests.control_plane import TEST_TOPOLOGY
from tests.secure_stack import Secure, Session, session, tenant_client
from tests.test_cli import vidfleet

# An FFmpeg build that is broken for captions only (the encoder probe still passes): what an
# operator fixes by rolling out a good image, after which the kept jobs are run again.
_BROKEN_FFMPEG = """#!/bin/sh
for arg in "$@"; do
  case "$arg" in subtitles=*)
    printf '\\033[31m[Parsed_subtitles_0 @ 0x5581] fontselect: fetching ' >&2
    printf 'https://cdn.example/f.ttf?token=s3cr3t-value\\033[0m\\n' >&2
    echo "[Parsed_subtitles_0 @ 0x5581] libass: password=hunter2 refused" >&2
    echo "Error initializing filter 'subtitles' with args '$PWD/sub.srt'" >&2
    exit 1;;
  esac
done
exec ffmpeg "$@"
"""


async def _settled(js: JetStreamContext, tenant: str, job_id: str) -> DeadLetter:
    """The job's letter once its inputs are kept (or could not be): watched, not polled."""
    kv = await js.key_value(DEAD_LETTERS_BUCKET)
    watcher = await kv.watch(job_key(tenant, job_id))
    try:
        while True:
            entry = await watcher.updates(timeout=30)
            if entry is not None and entry.value:
                letter = decode_dead_letter(entry.value)
                if letter.inputs_state != "keeping":
                    return letter
    finally:
        await watcher.stop()


def _names(job: CaptionJob) -> list[str]:
    return [parse_input_ref(ref)[1] for ref in (job.video, job.srt)]


@pytest.mark.timeout(120)
async def test_a_failed_job_is_kept_then_runs_again_as_a_new_attempt_after_the_fix(
        client: Client, js: JetStreamContext, nats_server: Secure, media_dir: Path,
        tmp_path: Path, outcomes: Outcomes) -> None:
    broken = tmp_path / "ffmpeg"
    broken.write_text(_BROKEN_FFMPEG)
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    receipt = await client.submit(job, job_id="talk-42")
    async with running_agent(agent_config(nats_server, tmp_path / "a", ffmpeg=str(broken)),
                             outcomes):
        failed = await client.result("talk-42", timeout_s=60)
    assert isinstance(failed, Failed) and failed.error.code == "ffmpeg_failed"
    for secret in ("s3cr3t", "hunter2", "\x1b", "[31m"):  # nor in the event everyone logs
        assert secret not in failed.error.message, secret

    # Kept, with the reason and FFmpeg's last lines, scrubbed; outside the backlog.
    letter = await _settled(js, "default", "talk-42")
    assert (letter.operation, letter.attempts, letter.inputs_state) == ("caption", 1, "kept")
    assert letter.error.code == "ffmpeg_failed" and letter.body
    tail = letter.error.stderr_tail
    assert "Error initializing filter 'subtitles'" in tail
    assert "https://cdn.example/f.ttf" in tail  # the URL stays, its secrets go
    for secret in ("s3cr3t", "hunter2", "\x1b", "token=s3", str(tmp_path)):
        assert secret not in tail, secret
    assert letter.inputs_bytes == sum((media_dir / n).stat().st_size
                                      for n in ("talk.mp4", "talk.srt"))
    assert (await js.stream_info(JOBS_STREAM)).state.messages == 0
    status = await client.status("talk-42")
    assert (status.state, status.dead_letter) == ("failed", True)
    listed, more = await client.dead_letters.letters()
    assert [x.job_id for x in listed] == ["talk-42"] and not more
    assert listed[0].body == "" and listed[0].error.stderr_tail == ""  # get has them
    rc, out, err = await vidfleet(nats_server, "dlq", "show", "talk-42")
    assert rc == 0, err
    assert "ffmpeg_failed" in out and "Error initializing filter" in out

    # The tenant's own copies expire (here: deleted); the kept ones bring the job back.
    for name in _names(job):
        await delete_object(js, inputs_bucket("default"), name)
    rc, out, err = await vidfleet(nats_server, "dlq", "retry", "talk-42")
    assert rc == 0, err
    assert "attempt 2 comes next" in out
    with pytest.raises(NoDeadLetter):
        await client.dead_letters.get("talk-42")
    for name in _names(job):  # back where the agent reads them; the kept copies gone
        await object_info(js, inputs_bucket("default"), name)
        with pytest.raises(ObjectMissing):
            await object_info(js, DEAD_LETTER_INPUTS_BUCKET,
                              kept_input_name("default", "talk-42", name))

    async with running_agent(agent_config(nats_server, tmp_path / "b"), outcomes):
        done = await client.result("talk-42", timeout_s=60)
    assert isinstance(done, Succeeded)
    assert (done.attempt, done.output.name.split("/")[:2]) == (2, ["talk-42", "2"])
    events = [e async for e in client.watch("talk-42", timeout_s=10)]
    kinds = [type(e).__name__ for e in events if not isinstance(e, Progress)]
    assert kinds == ["Queued", "Started", "Failed", "Requeued", "Queued", "Started",
                     "Succeeded"]
    assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
    assert next(e for e in events if isinstance(e, Requeued)).attempts_before == 1
    assert receipt.job_id == "talk-42"
    assert (await client.status("talk-42")).state == "succeeded"
    jobs, _ = await client.jobs()
    assert [j.job_id for j in jobs] == ["talk-42"]  # queued twice, listed once


async def test_exhausted_deliveries_are_kept_and_drop_forgets_them(
        js: JetStreamContext, client: Client) -> None:
    # Two deliveries only; a "machine" takes the job twice and hands it back each time.
    await ensure_topology(js, type(TEST_TOPOLOGY)(ack_wait_s=TEST_TOPOLOGY.ack_wait_s,
                                                  max_deliver=2))
    thief = await js.pull_subscribe_bind(consumer="agents", stream=JOBS_STREAM)
    await client.submit(CaptionJob(video="obj:gone.mp4", srt="obj:gone.srt"), job_id="lost")
    for _ in range(2):
        await (await thief.fetch(1, timeout=10))[0].nak()
    with pytest.raises(nats.errors.TimeoutError):  # the server notices: nothing to deliver
        await thief.fetch(1, timeout=1)
    await thief.unsubscribe()
    failed = await client.result("lost", timeout_s=30)  # the controller's reaper ended it
    assert isinstance(failed, Failed) and failed.error.code == "deliveries_exhausted"
    letter = await _settled(js, "default", "lost")
    assert (letter.attempts, letter.error.code, letter.inputs_state) == (
        2, "deliveries_exhausted", "lost")
    assert "expired" in letter.inputs_note
    with pytest.raises(DeadLetterError) as refused:  # its inputs are gone: say so
        await client.dead_letters.retry("lost")
    assert refused.value.code == "inputs_missing"
    dropped = await client.dead_letters.drop("lost")
    assert dropped.job_id == "lost"
    with pytest.raises(NoDeadLetter):
        await client.dead_letters.drop("lost")
    assert isinstance(await client.outcome("lost"), Failed)  # still failed, not kept


async def test_a_tenant_reaches_only_its_own_dead_letters(
        secure: Secure, ctl: Session, tmp_path: Path, outcomes: Outcomes) -> None:
    async with session(secure, "client", "alice", tenant="alice") as a, \
            session(secure, "client", "bob", tenant="bob") as b:
        alice, bob = tenant_client(a, "alice"), tenant_client(b, "bob")
        await alice.submit(CaptionJob(video="obj:none.mp4", srt="obj:none.srt"), job_id="j1")
        async with running_agent(agent_config(secure, tmp_path / "a"), outcomes):
            assert isinstance(await alice.result("j1", timeout_s=30), Failed)
        await _settled(ctl.nc.jetstream(), "alice", "j1")
        assert [x.job_id for x in (await alice.dead_letters.letters())[0]] == ["j1"]
        assert await bob.dead_letters.letters() == ([], False)
        for call in (bob.dead_letters.get, bob.dead_letters.retry, bob.dead_letters.drop):
            with pytest.raises(NoDeadLetter):  # bob's j1 is his own: there is none
                await call("j1")
        for subject in ("deadletters.alice.list", "deadletters.alice.get.j1",
                        "deadletters.alice.retry.j1", "deadletters.alice.drop.j1"):
            with pytest.raises(nats.errors.NoRespondersError):  # no import names alice's
                await b.nc.request(subject, b"", timeout=2)
        assert (await alice.dead_letters.get("j1")).job_id == "j1"  # untouched


async def test_the_expiry_is_a_setting_the_buckets_follow(js: JetStreamContext) -> None:
    await ensure_topology(js, type(TEST_TOPOLOGY)(dead_letter_max_age_s=3600.0), tenants=())
    kv = await js.key_value(DEAD_LETTERS_BUCKET)
    assert (await kv.status()).ttl == 3600.0
    store = await js.stream_info(f"OBJ_{DEAD_LETTER_INPUTS_BUCKET}")
    assert store.config.max_age == 3600.0
