"""Listing a bucket's keys (broker/stores.py ``kv_keys``), which a restarted controller's
machines and leases depend on: nats-py's ``KeyValue.keys()`` once answered "no keys" for a
full bucket under load, and the controller then destroyed its own machines as orphans."""

from __future__ import annotations

from nats.js import JetStreamContext

from broker.fleet import FleetInstance
from broker.stores import kv_keys
from broker.subjects import FLEET_BUCKET
from controller.fleet_store import FleetStore


def record(n: int) -> FleetInstance:
    return FleetInstance(label=f"vf-{n:03d}", provider="vast", state="serving",
                         launched_at=float(n), price_per_hour=0.3, machine_id=n)


async def test_every_key_is_listed_at_once_and_a_deleted_one_is_skipped(
        js: JetStreamContext) -> None:
    store = await FleetStore.open(js)
    assert await kv_keys(js, FLEET_BUCKET) == []  # empty: no error, nothing
    assert await store.load() == {}
    for n in range(300):
        await store.put(record(n))
    await store.delete("vf-007")
    kv = await js.key_value(FLEET_BUCKET)
    await kv.put("summary", b"{}")
    keys = await kv_keys(js, FLEET_BUCKET, "instances.")
    assert len(keys) == 300 and "summary" not in keys  # the deleted key's marker is listed
    assert "summary" in await kv_keys(js, FLEET_BUCKET)
    loaded = await store.load()  # straight after the writes: every record, the deleted one not
    assert sorted(loaded) == [f"vf-{n:03d}" for n in range(300) if n != 7]
    assert loaded["vf-299"] == record(299)
