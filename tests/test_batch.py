"""Batch manifests: parsing (pure), and ``vidfleet batch`` end to end with auth on: submit every
line, follow, download, report; run again after a stop and it resumes instead of repeating."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from nats.js import JetStreamContext

from broker.jobs import CaptionJob
from broker.subjects import EVENTS_STREAM
from client.api import Client
from client.manifest import read_manifest
from tests.secure_stack import Secure
from tests.test_cli import vidfleet


def _manifest(tmp_path: Path, media_dir: Path) -> Path:
    for name in ("talk.mp4", "talk.srt"):
        shutil.copy(media_dir / name, tmp_path / name)
    lines = [
        {"operation": "caption", "video": "talk.mp4", "srt": "talk.srt"},
        {"operation": "caption", "video": "talk.mp4", "srt": "talk.srt",
         "style": {"position": "top"}, "out": "top.mp4"},
        {"operation": "caption", "video": "missing.mp4", "srt": "talk.srt"},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n# a comment\n\n")
    return path


def test_lines_are_checked_and_numbered_and_ids_follow_the_content(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"operation": "caption", "video": "a.mp4", "srt": "obj:s.srt"}\n'
                     '\n'
                     '{"operation": "caption", "video": "a.mp4", "srt": "obj:s.srt"}\n'
                     '{"operation": "transcode", "video": "a.mp4"}\n'
                     '{"operation": "caption", "video": "a.mp4"}\n'
                     'not json\n'
                     '{"operation": "img2vid", "image": "https://h.example/i.png", '
                     '"id": "my-own"}\n')
    lines = read_manifest(jsonl)
    assert [line.number for line in lines] == [1, 3, 4, 5, 6, 7]
    assert lines[0].job_id == lines[1].job_id and lines[0].job_id.startswith("b")
    assert ("transcode" in lines[2].error and "$.srt" in lines[3].error) or "srt" in lines[3].error
    assert "not JSON" in lines[4].error
    assert lines[5].job_id == "my-own"
    os.utime(tmp_path / "a.mp4", ns=(1, 1))  # the file changed: a new job
    assert read_manifest(jsonl)[0].job_id != lines[0].job_id

    csv = tmp_path / "m.csv"
    csv.write_text("operation,image,duration_s,output.container,style.font,out\n"
                   "img2vid,https://h.example/i.png,2.5,webm,,clip.webm\n"
                   "img2vid,https://h.example/i.png,-1,,,\n")
    first, second = read_manifest(csv)
    assert first.ok and first.fields == {"image": "https://h.example/i.png",
                                         "duration_s": "2.5", "output": {"container": "webm"}}
    assert first.out == "clip.webm" and first.number == 2
    assert not second.ok and second.number == 3 and "duration_s" in second.error


async def test_a_manifest_runs_reports_and_resumes_without_repeating(
        agent, client: Client, js: JetStreamContext, nats_server: Secure,  # type: ignore[no-untyped-def]
        media_dir: Path, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, media_dir)
    out = tmp_path / "results"
    rc, _, err = await vidfleet(nats_server, "batch", str(manifest), "--out-dir", str(out),
                                "--no-wait")  # submitted, then "crashed"
    assert rc == 1, err  # not all done (and one line is invalid)
    rc, _, err = await vidfleet(nats_server, "batch", str(manifest), "--out-dir", str(out))
    assert rc == 1, err  # the invalid line still fails the batch
    assert "done 2/2 (succeeded 2" in err and "not submitted 1" in err
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [r["state"] for r in report] == ["succeeded", "succeeded", "invalid"]
    assert "no such file" in report[2]["error"] and report[2]["line"] == 3
    assert report[1]["output"] == str(out / "top.mp4")
    for entry in report[:2]:
        done = await client.result(entry["job_id"], timeout_s=5)
        assert hashlib.sha256(Path(entry["output"]).read_bytes()).hexdigest() == \
            done.output.sha256  # type: ignore[union-attr]
        info = await js.stream_info(EVENTS_STREAM,
                                    subjects_filter=f"events.default.{entry['job_id']}.>")
        kinds = [s.split(".")[3] for s in info.state.subjects or {}]
        assert kinds.count("queued") == 1 and kinds.count("started") == 1  # ran once

    made = (out / "top.mp4").stat().st_mtime_ns
    rc, _, err = await vidfleet(nats_server, "batch", str(manifest), "--out-dir", str(out))
    assert "done 2/2" in err
    assert (out / "top.mp4").stat().st_mtime_ns == made  # not downloaded again


async def test_submit_many_answers_each_job_and_goes_on_past_a_refusal(client: Client) -> None:
    jobs = [(f"m{n}", CaptionJob(video="obj:a", srt="obj:b")) for n in range(50)]
    jobs.insert(10, ("m5", CaptionJob(video="obj:a", srt="obj:b")))  # the same id again
    receipts = await client.submit_many(jobs, concurrency=16)
    assert len(receipts) == 51
    assert sum(1 for r in receipts if getattr(r, "duplicate", False)) == 1
    assert all(not isinstance(r, Exception) for r in receipts)
