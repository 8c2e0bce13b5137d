"""``vidfleet up``'s stack when its nats-server dies: it says so and starts it again on the
same port and data, and what was queued is still there."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from loguru import logger

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.subjects import JOBS_STREAM
from client.stack import Stack, StackOptions


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_up_says_so_and_starts_nats_again_when_it_dies(tmp_path: Path) -> None:
    said: list[str] = []
    sink = logger.add(lambda m: said.append(str(m)), level="ERROR")
    try:
        async with Stack(StackOptions(data_dir=tmp_path / "data", port=0, max_agents=1)) as stack:
            port, pid = stack.server.port, stack.server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while stack.server.pid in (None, pid) or not any(
                    "nats-server exited" in line for line in said):
                await asyncio.sleep(0.1)
            assert stack.server.port == port  # the same address: clients reconnect to it
            assert stack.creds_file is not None
            nc = await connect(stack.url, name="t", max_reconnect_attempts=20,
                               credentials=LiveCredentials.from_creds(
                                   stack.creds_file.read_text()))
            try:
                await nc.jetstream().stream_info(JOBS_STREAM)  # JetStream and its data back
            finally:
                await nc.close()
    finally:
        logger.remove(sink)
    line = next(line for line in said if "nats-server exited" in line)
    assert "code -9" in line and "starting it again" in line
