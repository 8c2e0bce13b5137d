"""Create a stream, KV bucket or object store, or bring an existing one to its settings: the
primitives broker/topology.py builds the fleet's storage with. Each is safe to repeat (every
start of ``vidfleet up`` and ``vidfleet setup`` runs them) and never deletes what exists.
And ``kv_keys``, the one way we list a bucket's keys.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

__all__ = ["ensure_kv", "ensure_object_store", "ensure_stream", "kv_keys"]


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration: bring it to ours (server refuses unsafe edits).
        await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig,
                     max_bytes: int = -1) -> None:
    """Create the bucket, then forbid rollups and purges on its stream: nats-py creates KV
    streams with rollups allowed, and one ``Nats-Rollup: all`` publish would empty the
    bucket. (Irreversible by design: the server refuses to allow purges again.) Reads are
    direct gets, by key (no message get by sequence is exported to anyone). With
    ``max_bytes`` the oldest entries go when it is full, rather than every write failing."""
    try:
        await js.key_value(config.bucket)
    except NotFoundError:
        await js.create_key_value(config)
    stream = f"KV_{config.bucket}"
    current = (await js.stream_info(stream)).config
    wanted: dict[str, object] = {"allow_rollup_hdrs": False, "deny_purge": True,
                                 "allow_direct": True, "max_bytes": max_bytes}
    if config.ttl:  # an expiry changed in the settings reaches the bucket
        wanted["max_age"] = config.ttl
    if max_bytes > 0:
        wanted["discard"] = DiscardPolicy.OLD
    if any(getattr(current, k) != v for k, v in wanted.items()):
        await js.update_stream(current.evolve(**wanted))


async def ensure_object_store(js: JetStreamContext, bucket: str,
                               config: ObjectStoreConfig) -> None:
    """Create the bucket, or bring its expiry and size to ``config``."""
    try:
        await js.object_store(bucket)
    except NotFoundError:
        await js.create_object_store(bucket, config)
        return
    current = (await js.stream_info(f"OBJ_{bucket}")).config
    if (current.max_age, current.max_bytes) != (config.ttl, config.max_bytes):
        await js.update_stream(current.evolve(max_age=config.ttl, max_bytes=config.max_bytes))


async def kv_keys(js: JetStreamContext, bucket: str, prefix: str = "") -> list[str]:
    """The keys of KV ``bucket`` under ``prefix`` (a deleted key may be among them: its get
    says KeyNotFound), from the stream's per-subject counts: one request, one answer.

    Not nats-py's ``KeyValue.keys()``: that is a watch whose "no more values" marker can come
    before the values (it trusts a consumer_info num_pending of 0 for messages the server has
    pushed and the client not yet handled), so under load it answered "no keys" for a full
    bucket. A controller restarted then forgot its machines, destroyed them as orphans and
    rented again (found by tests/test_controller.py's restart test during a full run)."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{prefix}>")
    start = len(f"$KV.{bucket}.")
    return sorted(subject[start:] for subject in info.state.subjects or {})
