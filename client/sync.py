"""The Python API for scripts without asyncio: ``Client``'s calls, blocking.

    from client.sync import SyncClient

    with SyncClient.connect("nats://127.0.0.1:4222", creds_file="alice.creds") as vf:
        receipt = vf.submit(CaptionJob(video=vf.upload_input("talk.mp4"),
                                       srt=vf.upload_input("talk.srt")))
        for event in vf.watch(receipt.job_id):
            print(event)
        done = vf.result(receipt.job_id)
        vf.download(done.output, "talk.captioned.mp4")

The async client runs on an event loop in a thread of its own (one per SyncClient), so this
works from any thread, and from code that has an event loop of its own running (a notebook):
calling the async client there directly would block that loop. Close it (or use ``with``),
or the thread lives until the process exits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from broker.dead_letters import DeadLetter
from broker.events import Cancelled, Event, Failed, OutputInfo, Succeeded
from broker.jobs import JobRequest
from broker.queries import JobState, JobStatus
from broker.submit import CancelReply
from client.api import Client, SubmitError, SubmitReceipt

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread) -> None:
        self._client = client
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, url: str, **options: Any) -> SyncClient:
        """As ``Client.connect`` (``creds_file``, ``tenant``, TLS options...)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="vidfleet-client", daemon=True)
        thread.start()
        try:
            client = asyncio.run_coroutine_threadsafe(
                Client.connect(url, **options), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(client, loop, thread)

    @property
    def tenant(self) -> str:
        return self._client.tenant

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncClient called from its own event loop's thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def upload_input(self, path: str | Path, name: str | None = None) -> str:
        return self._run(self._client.upload_input(path, name))

    def submit(self, job: JobRequest, *, job_id: str | None = None) -> SubmitReceipt:
        return self._run(self._client.submit(job, job_id=job_id))

    def submit_many(self, jobs: Iterable[tuple[str | None, JobRequest]], *,
                    concurrency: int = 64) -> list[SubmitReceipt | SubmitError]:
        return self._run(self._client.submit_many(jobs, concurrency=concurrency))

    def cancel(self, job_id: str, *, reason: str = "") -> CancelReply:
        return self._run(self._client.cancel(job_id, reason=reason))

    def status(self, job_id: str) -> JobStatus:
        return self._run(self._client.status(job_id))

    def jobs(self, *, state: JobState | None = None, since_s: float = 86400.0,
             limit: int = 50) -> tuple[list[JobStatus], bool]:
        return self._run(self._client.jobs(state=state, since_s=since_s, limit=limit))

    def dead_letters(self, *, limit: int = 100) -> tuple[list[DeadLetter], bool]:
        return self._run(self._client.dead_letters.letters(limit=limit))

    def dead_letter(self, job_id: str) -> DeadLetter:
        return self._run(self._client.dead_letters.get(job_id))

    def retry_dead_letter(self, job_id: str) -> int:
        return self._run(self._client.dead_letters.retry(job_id))

    def drop_dead_letter(self, job_id: str) -> DeadLetter:
        return self._run(self._client.dead_letters.drop(job_id))

    def result(self, job_id: str, *,
               timeout_s: float | None = None) -> Succeeded | Failed | Cancelled:
        return self._run(self._client.result(job_id, timeout_s=timeout_s))

    def download(self, output: OutputInfo, dest: str | Path) -> Path:
        return self._run(self._client.download(output, dest))

    def watch(self, job_id: str, *, timeout_s: float | None = None) -> Iterator[Event]:
        """The job's events as ``Client.watch`` yields them. Leaving the loop early closes
        the watch (its consumer is deleted)."""
        events: AsyncIterator[Event] = aiter(self._client.watch(job_id, timeout_s=timeout_s))
        try:
            while True:
                try:
                    yield self._run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(_close(events))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _next(events: AsyncIterator[Event]) -> Event:
    return await anext(events)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
