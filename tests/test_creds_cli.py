"""``vidfleet creds client/revoke`` against the embedded stack, which runs with auth on."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import nats
import nats.errors
import pytest

from broker.creds import LiveCredentials
from broker.jobs import CaptionJob
from broker.subjects import FLEET_BUCKET
from client.api import Client
from client.stack import Stack, StackOptions
from tests.test_cli import VIDFLEET


async def cli(data_dir: Path, url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *VIDFLEET, "--nats-url", url, *args, env={**os.environ, "VIDFLEET_DATA_DIR": str(data_dir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_client_creds_submit_but_cannot_see_the_fleet_and_revoke_cuts_them(
        tmp_path: Path, media_dir: Path) -> None:
    data = tmp_path / "data"
    async with Stack(StackOptions(data_dir=data, port=0, logs_to_files=True)) as stack:
        creds = tmp_path / "alice.creds"
        rc, out, err = await cli(data, stack.url, "creds", "client", "alice", "--expires", "2h",
                                 "--out", str(creds))
        assert rc == 0, err
        assert "valid until" in out and oct(creds.stat().st_mode & 0o777) == "0o600"
        assert (await cli(data, stack.url, "creds", "client", "no/slash"))[0] == 2
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        vf = await Client.connect(stack.url, creds_file=creds, closed_cb=on_closed)
        receipt = await vf.submit(CaptionJob(
            video=await vf.upload_input(media_dir / "talk.mp4"),
            srt=await vf.upload_input(media_dir / "talk.srt")))
        assert not receipt.duplicate
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await vf._js.key_value(FLEET_BUCKET)  # the fleet is not a client's business
        rc, _, err = await cli(data, stack.url, "--creds", str(creds), "status")
        assert rc == 1 and "needs the operator's credentials" in err
        rc, out, err = await cli(data, stack.url, "creds", "revoke", "alice")
        assert rc == 0 and "revoked" in out, err
        await asyncio.wait_for(closed.wait(), 10)  # its live connection is cut
        with pytest.raises((nats.errors.Error, OSError)):  # a new connection is refused
            live = LiveCredentials.from_creds(creds.read_text())
            await nats.connect(stack.url, user_jwt_cb=live.user_jwt, signature_cb=live.sign,
                               allow_reconnect=False, max_reconnect_attempts=0)
        await vf.close()
        assert (await cli(data, stack.url, "creds", "revoke", "bob"))[0] == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_admin_creds_expire_and_rotation_revokes_the_earlier_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Stack(StackOptions(data_dir=data, port=0, logs_to_files=True)) as stack:
        admin = data / "auth" / "admin.creds"
        first = LiveCredentials.from_creds(admin.read_text())
        assert first.expires_at is not None and first.expires_at - time.time() > 29 * 86400
        rc, out, err = await cli(data, stack.url, "creds", "admin", "--expires", "2h")
        assert rc == 0 and "every earlier admin.creds is revoked" in out, err
        second = LiveCredentials.from_creds(admin.read_text())
        assert second.claims["sub"] != first.claims["sub"]
        with pytest.raises((nats.errors.Error, OSError)):  # the earlier one is refused
            await nats.connect(stack.url, user_jwt_cb=first.user_jwt, signature_cb=first.sign,
                               allow_reconnect=False, max_reconnect_attempts=0)
        rc, out, err = await cli(data, stack.url, "status")  # the new one works
        assert rc == 0, err
        assert (await cli(data, stack.url, "creds", "revoke", "admin"))[0] == 2
        assert (await cli(data, stack.url, "creds", "client", "admin"))[0] == 2
