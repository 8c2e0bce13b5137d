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
    exited = asyncio.Event()

    def hear(message: object) -> None:
        said.append(str(message))
        if "nats-server exited" in str(message):
            exited.set()
    sink = logger.add(hear, level="ERROR")
    try:
        async with Stack(StackOptions(data_dir=tmp_path / "data", port=0, max_agents=1)) as stack:
            port, pid = stack.server.port, stack.server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(exited.wait(), 30)
            assert stack.creds_file is not None
            # (nats-py retries the connect until the restarted server answers)
            nc = await connect(stack.url, name="t", max_reconnect_attempts=20,
                               credentials=LiveCredentials.from_creds(
                                   stack.creds_file.read_text()))
            try:
                await nc.jetstream().stream_info(JOBS_STREAM)  # JetStream and its data back
            finally:
                await nc.close()
            assert (stack.server.port, stack.server.pid != pid) == (port, True)
    finally:
        logger.remove(sink)
    line = next(line for line in said if "nats-server exited" in line)
    assert "code -9" in line and "starting it again" in line
