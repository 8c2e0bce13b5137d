"""The fleet KV bucket, read and written by the controller alone (see broker/fleet.py).

A record is written *before* the provider is asked to rent, so a controller killed between
"create" and "record" still finds the machine by its label on restart instead of leaving it
to bill as an orphan.
"""

from __future__ import annotations

import msgspec
from loguru import logger
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.fleet import (
    SUMMARY_KEY,
    FleetInstance,
    FleetSummary,
    decode_fleet_instance,
    decode_fleet_summary,
    encode,
    instance_key,
)
from broker.stores import kv_keys
from broker.subjects import FLEET_BUCKET

__all__ = ["FleetStore"]


class FleetStore:
    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv, self._js = kv, js

    @classmethod
    async def open(cls, js: JetStreamContext) -> FleetStore:
        return cls(await js.key_value(FLEET_BUCKET), js)

    async def load(self) -> dict[str, FleetInstance]:
        records = {}
        for key in await kv_keys(self._js, FLEET_BUCKET, "instances."):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                try:
                    rec = decode_fleet_instance(entry.value)
                except msgspec.DecodeError:
                    logger.error("unreadable fleet record {key}: left alone", key=key)
                    continue
                records[rec.label] = rec
        return records

    async def put(self, rec: FleetInstance) -> None:
        await self._kv.put(instance_key(rec.label), encode(rec))

    async def delete(self, label: str) -> None:
        await self._kv.delete(instance_key(label))  # a delete marker; deleting twice is fine

    async def put_summary(self, summary: FleetSummary) -> None:
        await self._kv.put(SUMMARY_KEY, encode(summary))

    async def summary(self) -> FleetSummary | None:
        try:
            entry = await self._kv.get(SUMMARY_KEY)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return decode_fleet_summary(entry.value)
        except msgspec.DecodeError:  # only FLEET users write it; a broken one starts afresh
            logger.error("unreadable fleet summary: starting without it")
            return None
