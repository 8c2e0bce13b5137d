"""``vidfleet batch MANIFEST``: every line of a manifest (client/manifest.py) submitted, followed
with one live summary, its results downloaded into a folder, and a report written.

Run it again after a crash (or a Ctrl-C) and it resumes: each line's job id comes from the line,
so a job the first run submitted is found (by its events) and followed, not submitted again;
a result already in the folder with the right SHA-256 is not downloaded again.

The report, ``<out-dir>/report.jsonl``, has one JSON object per manifest line: ``line``,
``job_id``, ``state`` (succeeded, failed, cancelled, invalid, or queued/running when
``--no-wait`` or a timeout ended the run first), ``output`` (the file), ``error`` and
``cost_usd``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from broker.events import Cancelled, Event, Failed, Started, Succeeded
from client.api import Client, SubmitError
from client.commands import ClientConfig, open_client, run_command
from client.display import duration
from client.manifest import ManifestLine, job_from, local_inputs, read_manifest

__all__ = ["BatchRun", "batch"]

_UPLOADS_AT_ONCE = 4
_DOWNLOADS_AT_ONCE = 4
_CHECKS_AT_ONCE = 64


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results and report.jsonl go [default: <manifest>.out/].")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="--no-wait: submit, write the report, and return.")
@click.option("--timeout-s", type=float, default=None, help="Stop following after this long.")
@click.pass_obj
def batch(cfg: ClientConfig, manifest: Path, out_dir: Path | None, wait: bool,
          timeout_s: float | None) -> None:
    """Run every job of MANIFEST (JSON Lines, or CSV with a header row; one job per line,
    local files or URLs). Exit 0 when every line succeeded, 1 otherwise."""
    out = out_dir or manifest.with_name(manifest.name + ".out")
    sys.exit(run_command(_batch(cfg, manifest, out, wait, timeout_s)))


async def _batch(cfg: ClientConfig, manifest: Path, out: Path, wait: bool,
                 timeout_s: float | None) -> int:
    lines = read_manifest(manifest)
    async with await open_client(cfg) as vf:
        run = BatchRun(vf, lines, base=manifest.parent, out_dir=out)
        return await run.run(wait=wait, timeout_s=timeout_s)


class BatchRun:
    def __init__(self, vf: Client, lines: list[ManifestLine], *, base: Path, out_dir: Path,
                 stream: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._vf = vf
        self.lines = lines
        self._base = base
        self._out = out_dir
        self._stream = stream
        self._tty = stream.isatty()
        self._clock = clock
        self._jobs = {line.job_id for line in lines if line.ok}
        self.state: dict[str, str] = dict.fromkeys(self._jobs, "queued")
        self.outcomes: dict[str, Succeeded | Failed | Cancelled] = {}
        self.errors: dict[str, str] = {}  # job id -> why it could not be submitted
        self.files: dict[str, Path] = {}
        self._changed = asyncio.Event()
        self._finished_here = 0
        self._downloads: set[asyncio.Task[None]] = set()
        self._download_gate = asyncio.Semaphore(_DOWNLOADS_AT_ONCE)
        self._last_shown = ""
        self._recheck_at = 0

    async def run(self, *, wait: bool = True, timeout_s: float | None = None) -> int:
        self._out.mkdir(parents=True, exist_ok=True)
        started = self._clock()
        live = await self._vf.follow_all(self._on_event)  # before anything is submitted
        try:
            await self._submit_all()
            if wait:
                await self._follow(started, timeout_s)
            await asyncio.gather(*self._downloads)
        finally:
            await live.unsubscribe()
            self._show(started, final=True)
            self._write_report()
        done = all(isinstance(self.outcomes.get(line.job_id), Succeeded) and line.job_id in
                   self.files for line in self.lines if line.ok)
        return 0 if done and all(line.ok for line in self.lines) else 1

    # -- submitting ------------------------------------------------------------------------

    async def _submit_all(self) -> None:
        gate = asyncio.Semaphore(_CHECKS_AT_ONCE)

        async def known(job_id: str) -> bool:
            async with gate:
                return await self._vf.submitted(job_id)

        async def ended(job_id: str) -> None:  # submitted by an earlier run: finished?
            async with gate:
                outcome = await self._vf.outcome(job_id)
            if outcome is not None:
                await self._on_event(outcome, resumed=True)

        unique = {line.job_id: line for line in self.lines if line.ok}
        seen = await asyncio.gather(*(known(job_id) for job_id in unique))
        new = [line for line, was in zip(unique.values(), seen, strict=True) if not was]
        await asyncio.gather(*(ended(job_id) for job_id, was in zip(unique, seen, strict=True)
                               if was))
        refs = await self._upload(new)
        jobs = []
        for line in new:
            if line.job_id in self.errors:
                continue
            jobs.append((line.job_id, job_from(line, {
                name: refs[path] for name, path in local_inputs(line, self._base).items()})))
        for (job_id, _), receipt in zip(jobs, await self._vf.submit_many(jobs), strict=True):
            if isinstance(receipt, SubmitError):
                self.errors[job_id] = str(receipt)
                self.state[job_id] = "refused"
        self._changed.set()

    async def _upload(self, lines: list[ManifestLine]) -> dict[Path, str]:
        """Each local file once (``obj:batch/<digest>/<name>``); a line whose file cannot
        be uploaded is not submitted, and says why."""
        wanted = {path for line in lines for path in local_inputs(line, self._base).values()}
        gate = asyncio.Semaphore(_UPLOADS_AT_ONCE)
        refs: dict[Path, str] = {}

        async def one(path: Path) -> None:
            async with gate:
                digest = await asyncio.to_thread(_sha256, path)
                name = f"batch/{digest[:24]}/{_safe(path.name)}"
                try:
                    refs[path] = await self._vf.upload_input(path, name)
                except (OSError, ValueError) as exc:
                    for line in lines:
                        if path in local_inputs(line, self._base).values():
                            self.errors[line.job_id] = f"upload of {path} failed: {exc}"
                            self.state[line.job_id] = "refused"

        await asyncio.gather(*(one(path) for path in wanted))
        return refs

    # -- following -------------------------------------------------------------------------

    async def _on_event(self, event: Event, resumed: bool = False) -> None:
        if event.job_id not in self._jobs or event.job_id in self.outcomes:
            return
        if isinstance(event, (Succeeded, Failed, Cancelled)):
            self.outcomes[event.job_id] = event
            self.state[event.job_id] = type(event).__name__.lower()
            if not resumed:
                self._finished_here += 1
            if isinstance(event, Succeeded):
                task = asyncio.create_task(self._download(event))
                self._downloads.add(task)
                task.add_done_callback(self._downloads.discard)
        elif isinstance(event, Started):
            self.state[event.job_id] = "running"
        self._changed.set()

    def _pending(self) -> int:
        return sum(1 for job_id in self._jobs
                   if job_id not in self.outcomes and job_id not in self.errors)

    async def _follow(self, started: float, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else started + timeout_s
        while self._pending():
            self._show(started)
            self._changed.clear()
            wait_s = 1.0 if deadline is None else min(1.0, deadline - self._clock())
            if wait_s <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except TimeoutError:
                # A live event can be lost in a reconnect: look the outcomes up now and then.
                await self._recheck()

    async def _recheck(self) -> None:
        """A slice of the unfinished jobs, the next slice next time (round robin)."""
        open_jobs = sorted(j for j in self._jobs if j not in self.outcomes)
        if not open_jobs:
            return
        start = self._recheck_at % len(open_jobs)
        self._recheck_at = start + _CHECKS_AT_ONCE
        for job_id in open_jobs[start:start + _CHECKS_AT_ONCE]:
            outcome = await self._vf.outcome(job_id)
            if outcome is not None:
                await self._on_event(outcome)

    async def _download(self, done: Succeeded) -> None:
        line = next(line for line in self.lines if line.job_id == done.job_id)
        name = line.out or f"{line.number:05d}-{done.job_id}.{done.output.container}"
        dest = self._out / name
        async with self._download_gate:
            try:
                if not (dest.is_file() and await asyncio.to_thread(_sha256, dest)
                        == done.output.sha256):
                    await self._vf.download(done.output, dest)
                self.files[done.job_id] = dest
            except Exception as exc:  # reported per line; the others go on
                self.errors[done.job_id] = f"download failed: {type(exc).__name__}: {exc}"
        self._changed.set()

    # -- showing ---------------------------------------------------------------------------

    def summary(self, started: float) -> str:
        counts = {s: 0 for s in ("succeeded", "failed", "cancelled", "running", "queued")}
        for job_id in self._jobs:
            state = self.state[job_id]
            if state in counts:
                counts[state] += 1
        finished = counts["succeeded"] + counts["failed"] + counts["cancelled"]
        cost = sum(o.cost_usd for o in self.outcomes.values())
        elapsed = max(1e-9, self._clock() - started)
        left = counts["running"] + counts["queued"]
        eta = (f"ETA {duration(left * elapsed / self._finished_here)}"
               if self._finished_here and left else "ETA -")
        invalid = sum(1 for line in self.lines if not line.ok) + len(self.errors)
        return (f"done {finished}/{len(self._jobs)} (succeeded {counts['succeeded']}, failed "
                f"{counts['failed']}, cancelled {counts['cancelled']}), running "
                f"{counts['running']}, queued {counts['queued']}"
                + (f", not submitted {invalid}" if invalid else "")
                + f"; {eta}; cost ${cost:.4f}")

    def _show(self, started: float, final: bool = False) -> None:
        text = self.summary(started)
        if self._tty:
            self._stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        elif final or text != self._last_shown:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._last_shown = text

    def _write_report(self) -> None:
        with open(self._out / "report.jsonl", "w", encoding="utf-8") as report:
            for line in self.lines:
                outcome = self.outcomes.get(line.job_id) if line.ok else None
                entry = {
                    "line": line.number, "job_id": line.job_id or None,
                    "state": "invalid" if not line.ok else self.state[line.job_id],
                    "output": str(self.files[line.job_id]) if line.job_id in self.files
                    else None,
                    "error": line.error or self.errors.get(line.job_id) or (
                        f"{outcome.error.code}: {outcome.error.message}"
                        if isinstance(outcome, Failed) else None),
                    "cost_usd": outcome.cost_usd if outcome else 0.0}
                report.write(json.dumps(entry) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "input"
