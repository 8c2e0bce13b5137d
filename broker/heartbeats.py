"""Agent liveness on ``agents.<agent_id>.heartbeat`` (core NATS, not stored).

A heartbeat is a statement about now; a missed one is the signal. Stored history would only
let a reader mistake an old "idle" for a live agent.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

__all__ = ["AgentState", "Heartbeat", "decode_heartbeat", "encode_heartbeat"]

AgentState = Literal["idle", "busy", "draining", "stopped"]


class Heartbeat(Struct, frozen=True, kw_only=True):
    agent_id: str
    state: AgentState
    at: float  # unix seconds
    encoder: str  # the H.264 encoder its probe chose
    job_id: str | None = None  # the job in hand (the first slot's, with several)
    jobs_done: int = 0
    # How many jobs it runs at once (its WorkRequest.slots), and every job in hand, job_id
    # among them.
    slots: int = 1
    jobs: list[str] = []
    # Frames per second it encoded in all with 1, 2, ... encodes at once, measured at start
    # (gpu_agent/throughput.py) when it may run more than one; what its slot count rests on.
    throughput_fps: list[float] = []
    interval_s: float = 5.0  # when the next one is due; three missed ones mean gone


_DECODER = msgspec.json.Decoder(Heartbeat)
_ENCODER = msgspec.json.Encoder()


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return _ENCODER.encode(hb)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return _DECODER.decode(data)
