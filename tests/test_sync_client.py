"""The blocking facade, as a script uses it: a plain function in a thread of its own, against
a running stack with a tenant's creds file."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from broker.events import Event, Queued, Started, Succeeded
from broker.jobs import CaptionJob
from broker.subjects import DEFAULT_TENANT
from client.sync import SyncClient
from tests.secure_stack import Secure


async def test_a_script_submits_follows_downloads_and_cancels_without_asyncio(
        agent, nats_server: Secure, media_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    creds = nats_server.creds_file("client", "script", tenant=DEFAULT_TENANT)

    def script() -> tuple[list[Event], Succeeded, Path, Event, str]:
        with SyncClient.connect(nats_server.url, creds_file=creds) as vf:
            receipt = vf.submit(CaptionJob(video=vf.upload_input(media_dir / "talk.mp4"),
                                           srt=vf.upload_input(media_dir / "talk.srt")))
            events = list(vf.watch(receipt.job_id, timeout_s=60))
            done = vf.result(receipt.job_id)
            assert isinstance(done, Succeeded)
            path = vf.download(done.output, tmp_path / "out.mp4")
            replay = vf.watch(receipt.job_id)
            first = next(replay)
            replay.close()  # left early: the watch is closed, the client goes on
            state = vf.cancel(receipt.job_id).state
        return events, done, path, first, state

    events, done, path, first, state = await asyncio.to_thread(script)
    assert isinstance(events[0], Queued) and isinstance(events[1], Started)
    assert events[-1] == done
    assert hashlib.sha256(path.read_bytes()).hexdigest() == done.output.sha256
    assert isinstance(first, Queued)
    assert state == "succeeded"  # too late to cancel: it says what happened
