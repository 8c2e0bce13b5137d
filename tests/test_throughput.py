"""How many jobs at once an agent runs: its measured throughput at 1..N encodes at once
(gpu_agent/throughput.py), with real FFmpeg, and the rule that turns it into a slot count."""

from __future__ import annotations

import pytest

from gpu_agent.probe import probe_encoders
from gpu_agent.throughput import measure_throughput, slots_for


@pytest.mark.parametrize(("rates", "min_gain", "slots"), [
    ([], 0.15, 1),  # not even one encode worked: one slot
    ([300.0], 0.15, 1),
    ([300.0, 560.0, 700.0, 710.0], 0.15, 3),  # NVENC-like: the fourth adds 1 %
    ([300.0, 330.0, 700.0], 0.15, 1),  # stops at the first step that does not pay
    ([120.0, 118.0], 0.15, 1),  # libx264 on all cores: a second encode gains nothing
    ([120.0, 118.0], -1.0, 2),  # -1: every slot the controller allows
])
def test_each_slot_must_add_the_minimum_gain(rates: list[float], min_gain: float,
                                             slots: int) -> None:
    assert slots_for(rates, min_gain) == slots


async def test_throughput_is_measured_with_the_encoder_jobs_use() -> None:
    encoders = await probe_encoders("ffmpeg")
    rates = await measure_throughput("ffmpeg", encoders.h264, 2)
    assert len(rates) == 2 and all(r > 0 for r in rates)
    if encoders.h264 != "h264_nvenc":  # no GPU: NVENC fails, which ends the measurement
        assert await measure_throughput("ffmpeg", "h264_nvenc", 2) == []
