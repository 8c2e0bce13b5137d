"""The agent from its real image, as production runs it: built by ``make image``'s script
(deploy/build-image.sh), launched by the fake Vast.ai exactly as the provider's create request
says (image by digest, env, runtype, ``onstart``, ``args``: podman), with its own scoped
credentials on an operator-mode server, running real jobs for a tenant: a caption (FFmpeg with
libass and the fonts) and an img2vid (OpenCV and numpy), the two paths whose libraries the
image trims around.

The first build takes about two minutes (base, apt layer); later ones reuse podman's storage in
``$VIDFLEET_PODMAN_ROOT`` and take about 20 s.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from broker.auth import mint_user
from broker.config import Secret
from broker.events import Succeeded
from broker.jobs import CaptionJob, Img2VidJob
from controller.credentials import agent_env
from controller.providers.vast import VastConfig, VastProvider
from tests.fakes.vast import FakeVast, Podman
from tests.secure_stack import Secure, session, tenant_client

REPO_ROOT = Path(__file__).resolve().parent.parent
PODMAN_ROOT = Path(os.environ.get("VIDFLEET_PODMAN_ROOT", "/var/tmp/vidfleet-podman"))


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The image pinned by digest, built (or rebuilt from cache) once per test session."""
    built = subprocess.run(
        [str(REPO_ROOT / "deploy" / "build-image.sh"), "localhost/vidfleet-agent:test"],
        cwd=REPO_ROOT, env={**os.environ, "PY": sys.executable}, capture_output=True,
        text=True, timeout=900, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1].split()[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_agent_image_runs_a_job_launched_as_vast_launches_it(
        secure: Secure, agent_image: str, media_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERS_CONF", str(PODMAN_ROOT / "containers.conf"))
    podman = ["podman", "--root", str(PODMAN_ROOT / "storage"),
              "--runroot", str(PODMAN_ROOT / "runroot")]
    label = "vf-image"
    minted = mint_user(secure.keys, "agent", label, expires_in_s=600)
    with FakeVast(progress="realtime", boot_stages_s=(0.1, 0.1, 0.1),
                  start_container=Podman(podman, log_dir=tmp_path / "containers")) as fake:
        provider = VastProvider(VastConfig(
            api_key=Secret(fake.api_key), image=agent_image, base_url=fake.url,
            min_interval_s={}, allow_plaintext_agent_url=True))  # a loopback nats://
        try:
            offer = next(o for o in await provider.search_offers()
                         if o.gpu_name == "RTX 4090")
            await provider.launch(offer, label=label, env={
                "VIDFLEET_NATS_URL": secure.url, "VIDFLEET_VAST_URL": fake.url,
                "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5", **agent_env(minted)})
            [body] = fake.create_requests
            assert "@sha256:" in body["image"]  # pinned: the bytes tested are the bytes run
            async with session(secure, "client", "alice", tenant="alice") as s:
                vf = tenant_client(s, "alice")
                receipt = await vf.submit(CaptionJob(
                    video=await vf.upload_input(media_dir / "talk.mp4"),
                    srt=await vf.upload_input(media_dir / "talk.srt")))
                image = tmp_path / "photo.png"
                Image.radial_gradient("L").resize((640, 480)).convert("RGB").save(image)
                zoom = await vf.submit(Img2VidJob(image=await vf.upload_input(image),
                                                  duration_s=1, width=320, height=240))
                done = await vf.result(receipt.job_id, timeout_s=180)
                assert isinstance(done, Succeeded), done
                saved = await vf.download(done.output, tmp_path / "out.mp4")
                zoomed = await vf.result(zoom.job_id, timeout_s=120)
                assert isinstance(zoomed, Succeeded), zoomed
                assert (zoomed.output.width, zoomed.output.height) == (320, 240)
        finally:
            await provider.aclose()
    # Run by the agent inside the container (no NVENC here: the probe chose libx264).
    assert (done.agent_id, done.encoder) == (label, "libx264")
    assert (zoomed.agent_id, zoomed.encoder) == (label, "libx264")
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == done.output.sha256
    left = subprocess.run([*podman, "ps", "-aq", "--filter", "name=vast-fake-"],
                          capture_output=True, text=True, check=True).stdout
    assert left.strip() == "", "a container outlived its destroyed instance"
