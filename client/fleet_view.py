"""The fleet as the operator's tools see it: the controller's last summary and its machines,
read from the fleet KV (FLEET users only; a tenant's account reaches nothing of it)."""

from __future__ import annotations

import msgspec
import nats.js.errors
from loguru import logger
from nats.js import JetStreamContext

from broker.fleet import (
    SUMMARY_KEY,
    FleetInstance,
    FleetSummary,
    decode_fleet_instance,
    decode_fleet_summary,
)
from broker.stores import kv_keys
from broker.subjects import FLEET_BUCKET

__all__ = ["read_fleet"]


async def read_fleet(js: JetStreamContext) -> tuple[FleetSummary | None, list[FleetInstance]]:
    """The last summary and the machines on record, oldest first (empty before a controller
    has run). A record that cannot be read is logged and skipped."""
    try:
        kv = await js.key_value(FLEET_BUCKET)
    except nats.js.errors.NotFoundError:
        return None, []
    summary, machines = None, []
    for key in await kv_keys(js, FLEET_BUCKET):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if not entry.value:
            continue
        try:
            if key == SUMMARY_KEY:
                summary = decode_fleet_summary(entry.value)
            elif key.startswith("instances."):
                machines.append(decode_fleet_instance(entry.value))
        except msgspec.DecodeError:
            logger.warning("unreadable fleet record {key} skipped", key=key)
    return summary, sorted(machines, key=lambda m: m.launched_at)
