"""Every decoder of what another party wrote fails only with ValueError, whatever it is fed.

The controller, the agents and the clients read records and events that a tenant or an agent
(someone we do not trust) may have written. Their callers skip a ValueError and log it; any
other exception would escape and could take a process down (the reaper once did, every 30 s).
This property test throws garbage and near-miss JSON at each decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.events import decode_event, event_from_msg
from broker.fleet import (
    decode_command,
    decode_controller_beat,
    decode_fleet_instance,
    decode_fleet_summary,
    decode_renew_reply,
)
from broker.heartbeats import decode_heartbeat
from broker.jobs import decode_job
from broker.submit import decode_submit_reply

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "event": decode_event,
    "fleet instance": decode_fleet_instance,
    "fleet summary": decode_fleet_summary,
    "controller beat": decode_controller_beat,
    "command": decode_command,
    "renew reply": decode_renew_reply,
    "heartbeat": decode_heartbeat,
    "submit reply": decode_submit_reply,
    "caption job": lambda b: decode_job("caption", b),
    "img2vid job": lambda b: decode_job("img2vid", b),
    "add_audio job": lambda b: decode_job("add_audio", b),
}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=12)
_kinds = st.sampled_from(["queued", "started", "progress", "retrying", "succeeded", "failed",
                          "cancelled", ""])
# Bodies that look like ours: a known tag and some of the right field names, wrong values.
_near = st.builds(lambda kind, extra: json.dumps({"kind": kind, "job_id": "j", **extra}),
                  _kinds, st.dictionaries(st.sampled_from(
                      ["at", "agent_id", "attempt", "output", "timings", "error", "tenant",
                       "operation", "percent", "label", "state", "video", "srt", "image"]),
                      _json, max_size=6))
_bodies = st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()) | \
    _near.map(str.encode)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_a_decoder_fails_only_with_value_error(name: str, body: bytes) -> None:
    try:
        decoded = DECODERS[name](body)
    except ValueError:
        return
    assert isinstance(decoded, msgspec.Struct)


_tokens = st.text(alphabet=st.characters(blacklist_characters=". \t\r\n"), min_size=0,
                  max_size=8)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(subject=st.lists(_tokens, min_size=1, max_size=7).map(".".join),
       headers=st.none() | st.dictionaries(
           st.sampled_from(["Nats-Subject", "Nats-Time-Stamp", "Nats-Sequence", "X"]),
           st.text(max_size=30), max_size=4),
       body=_bodies)
def test_reading_any_message_as_an_event_fails_only_with_value_error(
        subject: str, headers: dict[str, str] | None, body: bytes) -> None:
    try:
        decoded = event_from_msg(subject, headers, body)
    except ValueError:
        return
    assert decoded is None or isinstance(decoded, msgspec.Struct)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(tenant=_tokens, job=_tokens, kind=_kinds, body=_bodies,
       headers=st.fixed_dictionaries({}, optional={
           "Nats-Subject": st.text(max_size=30), "Nats-Time-Stamp": st.text(max_size=30),
           "Nats-Sequence": st.text(max_size=5)}))
def test_events_on_well_formed_subjects_too(tenant: str, job: str, kind: str, body: bytes,
                                            headers: dict[str, str]) -> None:
    try:
        decoded = event_from_msg(f"events.{tenant}.{job}.{kind}.x", headers,
                                 b"" if kind == "queued" else body)
    except ValueError:
        return
    assert decoded is None or decoded.job_id == job
