"""The vidfleet command line, run as a real process against a real stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest

from broker.events import Progress, Succeeded
from broker.jobs import AddAudioJob, CaptionJob, Img2VidJob
from broker.subjects import DEFAULT_TENANT
from client.api import Client
from client.submit_cli import submit
from tests.media import ffprobe, make_tone, make_video
from tests.prometheus import free_port
from tests.secure_stack import Secure

VIDFLEET = [sys.executable, "-c", "from client.cli import main; main()"]


async def vidfleet(server: Secure, *args: str, creds: Path | None = None,
                   cwd: Path | None = None) -> tuple[int, str, str]:
    """The CLI against ``server``, by default as a client of tenant ``default`` (the ``js``
    fixture creates it)."""
    creds = creds or server.creds_file("client", "cli", tenant=DEFAULT_TENANT)
    proc = await asyncio.create_subprocess_exec(
        *VIDFLEET, "--nats-url", server.url, "--creds", str(creds), *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_submit_no_wait_then_watch_then_result(agent, nats_server, media_dir: Path,
                                                     tmp_path: Path) -> None:
    rc, out, err = await vidfleet(nats_server, "submit", "caption",
                                  "--video", str(media_dir / "talk.mp4"),
                                  "--srt", str(media_dir / "talk.srt"), "--no-wait")
    assert rc == 0, err
    job_id = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", job_id)

    rc, out, err = await vidfleet(nats_server, "watch", job_id)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("queued") and lines[1].startswith("started")
    assert "libx264" in lines[1] and lines[-1].startswith("succeeded")

    rc, out, err = await vidfleet(nats_server, "result", job_id, "--out",
                                  str(tmp_path / "r.mp4"))
    assert rc == 0, err
    assert "encoder libx264" in out
    assert float(ffprobe(tmp_path / "r.mp4")["format"]["duration"]) == pytest.approx(3.0, abs=0.1)


async def test_cancel_a_queued_job_then_watch_and_result_say_so(
        client, nats_server, media_dir: Path, tmp_path: Path) -> None:  # no agent: it waits
    rc, out, err = await vidfleet(nats_server, "submit", "caption",
                                  "--video", str(media_dir / "talk.mp4"),
                                  "--srt", str(media_dir / "talk.srt"), "--no-wait")
    assert rc == 0, err
    job_id = out.strip()
    rc, out, err = await vidfleet(nats_server, "cancel", job_id, "--reason", "wrong file")
    assert (rc, out.strip()) == (0, f"job {job_id} cancelled"), err
    rc, _, err = await vidfleet(nats_server, "cancel", job_id)  # again: already so, still 0
    assert rc == 0 and "already cancelled" in err
    rc, out, err = await vidfleet(nats_server, "watch", job_id)
    assert rc == 4, err  # 4: cancelled
    assert out.splitlines()[-1] == "cancelled: wrong file before it started"
    rc, _, err = await vidfleet(nats_server, "result", job_id, "--out", str(tmp_path / "r.mp4"))
    assert rc == 4 and "cancelled" in err and not (tmp_path / "r.mp4").exists()
    rc, _, err = await vidfleet(nats_server, "cancel", "no-such-job")
    assert rc == 1 and "no job 'no-such-job'" in err


async def test_submit_waits_shows_progress_and_downloads(agent, nats_server, media_dir: Path,
                                                         tmp_path: Path) -> None:
    rc, out, err = await vidfleet(nats_server, "submit", "caption",
                                  "--video", str(media_dir / "talk.mp4"),
                                  "--srt", str(media_dir / "talk.srt"), "--job-id", "cli-1",
                                  cwd=tmp_path)
    assert rc == 0, err
    assert "progress" in err and "succeeded" in err
    assert (tmp_path / "talk.captioned.mp4").is_file()
    assert str(tmp_path / "talk.captioned.mp4") in out


async def test_submit_add_audio(agent, nats_server, media_dir: Path, tmp_path: Path) -> None:
    music = make_tone(tmp_path / "music.wav", freq_hz=1000, seconds=2.0)
    rc, out, err = await vidfleet(nats_server, "submit", "add-audio",
                                  "--video", str(media_dir / "talk.mp4"), "--audio", str(music),
                                  "--mode", "mix", "--offset-s", "0.5", cwd=tmp_path)
    assert rc == 0, err
    result = tmp_path / "talk.with-audio.mp4"
    assert str(result) in out and "encoder copy" in out
    assert {s["codec_type"] for s in ffprobe(result)["streams"]} == {"video", "audio"}


async def test_submit_img2vid_and_a_bad_style_value(agent, nats_server, tmp_path: Path) -> None:
    image = tmp_path / "still.png"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=400x300",
                    "-frames:v", "1", str(image)], check=True)
    rc, out, err = await vidfleet(nats_server, "submit", "img2vid", "--image", str(image),
                                  "--duration-s", "1", "--fps", "10", "--width", "160",
                                  "--height", "90", "--zoom-to", "1.5", cwd=tmp_path)
    assert rc == 0, err
    result = tmp_path / "still.kenburns.mp4"
    assert str(result) in out
    stream = ffprobe(result)["streams"][0]
    assert (stream["width"], stream["height"], stream["nb_frames"]) == (160, 90, "10")
    rc, _, err = await vidfleet(nats_server, "submit", "caption", "--video", str(image),
                                "--srt", str(image), "--color", "red")
    assert rc == 2 and "$.color" in err


async def test_failed_job_exits_1_with_the_reason(agent, nats_server, media_dir: Path,
                                                  tmp_path: Path) -> None:
    bad = tmp_path / "bad.srt"
    bad.write_text("1\n00:00:01 --> 00:00:02\nHi\n")
    rc, _, err = await vidfleet(nats_server, "submit", "caption",
                                "--video", str(media_dir / "talk.mp4"), "--srt", str(bad))
    assert rc == 1
    assert "failed" in err and "timing line" in err


def _leaf_fields(cls: type) -> dict[str, object]:
    """Every settable field of a job Struct, nested ones (style, output) flattened."""
    out: dict[str, object] = {}
    for field in msgspec.structs.fields(cls):
        if isinstance(field.default, msgspec.Struct):
            out |= _leaf_fields(type(field.default))
        else:
            out[field.name] = field.default
    return out


@pytest.mark.parametrize(("command", "cls"), [
    ("caption", CaptionJob), ("img2vid", Img2VidJob), ("add-audio", AddAudioJob)])
def test_every_job_field_has_a_flag_with_the_jobs_own_default(command: str, cls: type) -> None:
    params = {p.name: p for p in submit.commands[command].params}  # type: ignore[attr-defined]
    fixed = {"add-audio": {"codec", "quality"}}.get(command, set())  # the video is copied
    for name, default in _leaf_fields(cls).items():
        if name in fixed:
            continue
        assert name in params, f"{command}: no flag for {name}"
        if default is not msgspec.NODEFAULT:
            assert params[name].default == default, (command, name)


async def test_missing_local_file_is_a_usage_error(nats_server, js, tmp_path: Path) -> None:
    rc, _, err = await vidfleet(nats_server, "submit", "caption",
                                "--video", str(tmp_path / "nope.mp4"), "--srt", "x.srt")
    assert rc == 2 and "no such file" in err


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_up_runs_the_stack_and_ctrl_c_lets_the_running_job_finish(
        media_dir: Path, tmp_path: Path) -> None:
    # Its own session, like a shell's foreground job: Ctrl-C goes to the whole group.
    metrics = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        *VIDFLEET, "up", "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--metrics-listen", metrics, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stderr
    url = None
    while url is None:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "vidfleet up exited before it was up"
        if m := re.search(r"NATS at (nats://\S+),", line):
            url = m.group(1)
            assert f"metrics on http://{metrics}/metrics" in line
    async with httpx.AsyncClient() as http:  # the controller serves them there
        assert "vidfleet_backlog_jobs" in (await http.get(f"http://{metrics}/metrics")).text
    video = make_video(tmp_path / "mid.mp4", seconds=20, size="640x360")
    creds = tmp_path / "data" / "auth" / "admin.creds"  # auth is on: made at first start
    async with await Client.connect(url, creds_file=creds) as vf:
        receipt = await vf.submit(CaptionJob(
            video=await vf.upload_input(video),
            srt=await vf.upload_input(media_dir / "talk.srt")))
        async for event in vf.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Progress):
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C while the job is encoding
                break
        done = await vf.result(receipt.job_id, timeout_s=90)
    # Run by an agent the controller started for it (none runs while idle).
    assert isinstance(done, Succeeded) and done.attempt == 1 and done.agent_id.startswith("vf-")
    await asyncio.wait_for(proc.stderr.read(), 60)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    check = await asyncio.create_subprocess_exec("pgrep", "-f", str(tmp_path / "data"))
    assert await check.wait() == 1, "nats-server outlived vidfleet up"
    assert not processes_with_env(f"VIDFLEET_NATS_URL={url}"), "a child outlived vidfleet up"


def processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds ``entry`` (the controller and agents all get the URL)."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            if entry.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigterm_on_demo_stops_its_private_stack(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *VIDFLEET, "demo", "--out-dir", str(tmp_path / "out"), "--seconds", "5",
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "demo exited early"
        if line.startswith("job "):
            break
    proc.terminate()
    await asyncio.wait_for(proc.stderr.read(), 60)
    assert await asyncio.wait_for(proc.wait(), 60) == 130
    check = await asyncio.create_subprocess_exec("pgrep", "-f", str(tmp_path / "out"))
    assert await check.wait() == 1, "the demo's nats-server outlived it"
    work = tmp_path / "out" / "stack" / "work"  # in the controller's and its agents' env
    assert not processes_with_env(f"VIDFLEET_LOCAL_WORK_DIR={work}")


async def test_webhooks_commands_print_the_secret_only_when_made_or_asked(
        js, nats_server) -> None:  # type: ignore[no-untyped-def]
    admin = nats_server.auth.admin_creds
    rc, out, err = await vidfleet(nats_server, "webhooks", "set", "default", "--url",
                                  "https://hooks.example/v", creds=admin)
    assert rc == 0, err
    secret = re.search(r"signing secret \(new\): (whsec_\S+)", out)
    assert secret and "default webhook https://hooks.example/v" in out
    rc, out, _ = await vidfleet(nats_server, "webhooks", "show", "default", creds=admin)
    assert rc == 0 and "signing secret: set" in out and secret.group(1) not in out
    rc, out, _ = await vidfleet(nats_server, "webhooks", "show", "default", "--secret",
                                creds=admin)
    assert secret.group(1) in out
    rc, _, err = await vidfleet(nats_server, "webhooks", "show", "default")  # a tenant's creds
    assert rc == 1 and "operator's credentials" in err
