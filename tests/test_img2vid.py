"""img2vid: exact Ken Burns geometry, measured on real encoded frames."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import numpy as np
import pytest

from broker.events import Failed, Succeeded
from broker.jobs import Img2VidJob
from gpu_agent.ops.img2vid import ease, frame_boxes, frame_count
from tests.media import ffprobe, level_db, make_tone

OUT_W, OUT_H = 320, 180
DOTS_X = (160.0, 480.0)  # in the 640x360 source: 160 px either side of the centre


def _job(**kw: object) -> Img2VidJob:
    values: dict[str, object] = dict(image="obj:x", width=OUT_W, height=OUT_H, fps=25,
                                     duration_s=2.0)
    values.update(kw)
    return msgspec.convert(values, Img2VidJob)


@pytest.mark.parametrize("easing", ["linear", "ease_in", "ease_out", "ease_in_out"])
def test_zoom_starts_and_ends_exactly_as_asked(easing: str) -> None:
    job = _job(zoom_from=1.2, zoom_to=2.0, easing=easing, focus_x=0.25, focus_y=0.8)
    boxes = frame_boxes(job)
    assert len(boxes) == frame_count(job) == 50
    assert boxes[0].w == pytest.approx(OUT_W / 1.2) and boxes[-1].w == pytest.approx(OUT_W / 2)
    widths = [b.w for b in boxes]
    assert widths == sorted(widths, reverse=True)  # monotonic zoom in
    for b in boxes:  # the focus point keeps its place in the frame, inside the image
        assert b.x0 + 0.25 * b.w == pytest.approx(0.25 * OUT_W)
        assert b.y0 + 0.8 * b.h == pytest.approx(0.8 * OUT_H)
        assert b.x0 >= 0 and b.x0 + b.w <= OUT_W + 1e-9
    assert ease(0.0, easing) == 0.0 and ease(1.0, easing) == pytest.approx(1.0)


def test_pan_moves_the_focus_and_zoom_out_works() -> None:
    boxes = frame_boxes(_job(zoom_from=2.0, zoom_to=1.0, focus_x=0.0, pan_to_x=1.0))
    assert boxes[0].x0 == 0.0 and boxes[-1].x0 == pytest.approx(0.0)  # full frame at zoom 1
    assert boxes[0].w == pytest.approx(OUT_W / 2) and boxes[-1].w == pytest.approx(OUT_W)
    assert boxes[len(boxes) // 2].x0 > 0  # moving right while zooming out


@pytest.fixture(scope="module")
def dots_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """640x360 black with two soft white dots at known places (PNG, lossless)."""
    from PIL import Image

    yy, xx = np.mgrid[0:360, 0:640].astype(np.float64)
    img = np.zeros((360, 640))
    for cx in DOTS_X:
        img += 255 * np.exp(-((xx + 0.5 - cx) ** 2 + (yy + 0.5 - 180) ** 2) / (2 * 6.0 ** 2))
    path = tmp_path_factory.mktemp("img") / "dots.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def _luma_frames(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
                          "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, OUT_H, OUT_W).astype(np.float64)


def _dot_distance(frame: np.ndarray) -> float:
    xs = np.arange(OUT_W) + 0.5
    centres = []
    for half in (slice(0, OUT_W // 2), slice(OUT_W // 2, OUT_W)):
        weights = np.clip(frame[:, half] - 16, 0, None)  # above black (limited range)
        centres.append((weights.sum(axis=0) * xs[half]).sum() / weights.sum())
    return centres[1] - centres[0]


async def test_ken_burns_zoom_is_exact_and_smooth(client, agent, dots_image: Path,
                                                  tmp_path: Path) -> None:
    job = _job(image=await client.upload_input(dots_image), zoom_from=1.0, zoom_to=1.5)
    receipt = await client.submit(job)
    done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "out.mp4")
    probe = ffprobe(out)
    stream = probe["streams"][0]
    assert (stream["width"], stream["height"], int(stream["nb_frames"])) == (OUT_W, OUT_H, 50)
    assert float(probe["format"]["duration"]) == pytest.approx(2.0, abs=0.04)
    assert done.output.duration_s == pytest.approx(2.0)

    distances = np.array([_dot_distance(f) for f in _luma_frames(out)])
    expected = 160.0 * np.array([1.0 + 0.5 * n / 49 for n in range(50)])  # 0.5 px per src px
    assert distances[0] == pytest.approx(160.0, abs=0.3)  # zoom_from at the first frame
    assert distances[-1] == pytest.approx(240.0, abs=0.3)  # zoom_to at the last
    assert np.all(np.diff(distances) > 0)  # monotonic
    steps = np.diff(distances)
    assert np.abs(steps - steps.mean()).max() < 0.15  # no judder: even steps
    assert np.sqrt(np.mean((distances - expected) ** 2)) < 0.15


async def test_portrait_pad_and_music_bed(client, agent, dots_image: Path,
                                          tmp_path: Path) -> None:
    music = make_tone(tmp_path / "bed.wav", freq_hz=1000, seconds=5.0)
    job = _job(image=await client.upload_input(dots_image), width=180, height=320,
               fit="pad", pad_color="#FFFFFF", zoom_to=1.0,
               audio=await client.upload_input(music), audio_fade_out_s=0.8)
    done = await client.result((await client.submit(job)).job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "out.mp4")
    durations = {s["codec_type"]: float(s["duration"]) for s in ffprobe(out)["streams"]}
    assert durations["video"] == pytest.approx(2.0, abs=0.04)
    assert durations["audio"] == pytest.approx(2.0, abs=0.05)
    assert level_db(out, start_s=1.85, seconds=0.15) < level_db(out, start_s=0.5, seconds=0.5) - 10
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(out),
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         check=True, capture_output=True).stdout
    frame = np.frombuffer(raw, np.uint8).reshape(320, 180)
    # White bars above and below the 16:9 image (101 rows in the middle), black image between.
    assert frame[:100].min() > 200 and frame[-100:].min() > 200
    assert np.median(frame[120:200]) < 40


async def test_not_an_image_fails_clearly(client, agent, tmp_path: Path) -> None:
    junk = tmp_path / "photo.jpg"
    junk.write_bytes(b"not an image at all" * 50)
    receipt = await client.submit(_job(image=await client.upload_input(junk)))
    failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed) and failed.error.code == "invalid_input"
    assert failed.error.message.startswith("image")


def _dot_centres(frame: np.ndarray) -> list[float]:
    xs = np.arange(OUT_W) + 0.5
    centres = []
    for half in (slice(0, OUT_W // 2), slice(OUT_W // 2, OUT_W)):
        weights = np.clip(frame[:, half] - 16, 0, None)
        centres.append(float((weights.sum(axis=0) * xs[half]).sum() / weights.sum()))
    return centres


async def test_focus_and_pan_put_the_image_where_asked(client, agent, dots_image: Path,
                                                       tmp_path: Path) -> None:
    """Absolute positions, not just the zoom: an off-centre focus panning across."""
    job = _job(image=await client.upload_input(dots_image), zoom_from=1.4, zoom_to=1.4,
               focus_x=0.2, pan_to_x=0.8, output={"quality": 10})
    done = await client.result((await client.submit(job)).job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    frames = _luma_frames(await client.download(done.output, tmp_path / "out.mp4"))
    boxes = frame_boxes(job)
    checked = 0
    for n in range(0, len(boxes), 7):
        box = boxes[n]
        expected = [(x * OUT_W / 640 - box.x0) * OUT_W / box.w for x in DOTS_X]
        if all(OUT_W * 0.05 < e < OUT_W * 0.95 and (e < OUT_W / 2) == (i == 0)
               for i, e in enumerate(expected)):
            got = _dot_centres(frames[n])
            assert got == pytest.approx(expected, abs=0.35), (n, got, expected)
            checked += 1
    assert checked >= 3  # frames where both dots are well inside their halves
    first, last = _dot_centres(frames[0]), _dot_centres(frames[-1])
    assert last[0] < first[0] - 50  # the view moved right, so the dots moved left


def test_working_canvas_grows_only_for_deep_zooms_into_big_images() -> None:
    from gpu_agent.ops.img2vid import canvas_size

    assert canvas_size(_job(zoom_to=1.25), 4000, 3000) == (OUT_W, OUT_H)  # shallow: no cost
    assert canvas_size(_job(zoom_to=3.0), 4000, 2250) == (OUT_W * 3, OUT_H * 3)
    assert canvas_size(_job(zoom_to=3.0), 640, 360) == (640, 360)  # only the detail it has
    assert canvas_size(_job(zoom_to=3.0), 200, 100) == (OUT_W, OUT_H)  # small image: no gain


async def test_a_deep_zoom_keeps_a_big_images_detail(client, agent, tmp_path: Path) -> None:
    """A 2 px checkerboard in a 1280x720 image, shown at zoom 4 in a 320x180 frame: the
    checks must survive (fitting to 320x180 first would average them to flat grey)."""
    from PIL import Image

    yy, xx = np.mgrid[0:720, 0:1280]
    checks = (((xx // 2) + (yy // 2)) % 2 * 255).astype(np.uint8)
    image = tmp_path / "checks.png"
    Image.fromarray(checks).save(image)
    job = _job(image=await client.upload_input(image), zoom_from=4.0, zoom_to=4.0,
               duration_s=0.4, output={"quality": 5})
    done = await client.result((await client.submit(job)).job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    frame = _luma_frames(await client.download(done.output, tmp_path / "out.mp4"))[0]
    assert frame[60:120, 100:220].std() > 40  # high contrast at 2 px, not a grey blur
