"""Streams, the agents' consumer, the control KVs and each tenant's object stores, idempotently.

``ensure_topology`` may run any number of times, from any process that has the rights: it
creates what is missing and updates what drifted. Agents never call it; they bind to the
consumer by name. The consumer's ``ack_wait`` is how long a vanished machine holds its job
before redelivery: too long and a crash stalls a job for minutes, too short (below the agents'
renewal interval) and a live job is run twice.
"""

from __future__ import annotations

from msgspec import Struct, structs
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import NotFoundError

from broker.cluster import replicas_in_use
from broker.stores import ensure_kv, ensure_object_store, ensure_stream
from broker.subjects import (
    AUTH_BUCKET,
    DEAD_LETTER_INPUTS_BUCKET,
    DEAD_LETTERS_BUCKET,
    DEFAULT_TENANT,
    EVENTS_STREAM,
    EXHAUSTED_CONSUMER,
    EXHAUSTED_STREAM,
    EXHAUSTED_SUBJECT,
    FLEET_BUCKET,
    JOB_COSTS_BUCKET,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    LEASES_BUCKET,
    QUEUE_PUBLISHER,
    RESULT_CACHE_BUCKET,
    WEBHOOK_JOBS_BUCKET,
    WEBHOOK_SETTINGS_BUCKET,
    inputs_bucket,
    results_bucket,
    tenant_events_stream,
)

__all__ = ["TopologyConfig", "ensure_tenant", "ensure_topology", "jobs_consumer_config",
           "jobs_stream_config"]

_DAY_S = 24 * 3600.0


class TopologyConfig(Struct, frozen=True, kw_only=True):
    replicas: int = 1  # 3 on a 3-node cluster
    ack_wait_s: float = 30.0  # agents renew the lease every ack_wait_s / 3
    # Deliveries per job. Machines lost mid-job and retryable failures both use them up; the
    # agents' own failure budget (VIDFLEET_MAX_FAILURES) is smaller, so what runs out here is
    # host loss: the reaper then fails the job ("deliveries_exhausted").
    max_deliver: int = 8
    max_ack_pending: int = 1000  # jobs running at once across the whole fleet
    max_queued_jobs: int = 100_000
    duplicate_window_s: float = 3600.0  # a resubmitted job id inside this window is dropped
    events_max_age_s: float = 7 * _DAY_S
    max_events_per_job_kind: int = 50_000  # progress beyond this (~14 h at 1/s) drops the oldest
    # Bytes kept at most; past it the oldest go. What agents make the controller write is
    # bounded per lease (controller/reports.py); this bounds the rest, so no flood can fill
    # the server's disk for everyone.
    # (JetStream reserves each limit on the disk up front.)
    events_max_bytes: int = 2 * 2**30
    tenant_events_max_bytes: int = 256 * 2**20  # each tenant's copy, EVENTS-<tenant>
    jobstate_max_bytes: int = 256 * 2**20
    inputs_max_age_s: float = 1 * _DAY_S
    results_max_age_s: float = 7 * _DAY_S
    # Per tenant: what its inputs and its results may hold at once. Past it an upload is
    # refused (the buckets discard nothing old), for that tenant only. JetStream reserves
    # each bucket's limit on the server's disk up front: size these by disk / tenants.
    tenant_inputs_max_bytes: int = 4 * 2**30  # as large as one input may be (the agents')
    tenant_results_max_bytes: int = 4 * 2**30
    # Consumers on a tenant's events stream (its clients' watches); past it the server refuses
    # a new one, for that tenant only. Its buckets allow more: every input the dispatcher
    # reads for an agent is a consumer there too, so their cap must exceed the tenant's jobs
    # running at once.
    tenant_max_consumers: int = 64
    tenant_bucket_max_consumers: int = 1024
    # Jobs that failed for good are kept this long, with a copy of their obj: inputs (at most
    # dead_letter_inputs_max_bytes for everyone; the controller caps each tenant's share).
    dead_letter_max_age_s: float = 7 * _DAY_S
    dead_letters_max_bytes: int = 256 * 2**20
    dead_letter_inputs_max_bytes: int = 4 * 2**30


def jobs_stream_config(cfg: TopologyConfig) -> StreamConfig:
    return StreamConfig(
        name=JOBS_STREAM,
        description="vidfleet job requests: jobs.<tenant>.<operation>.<job_id>",
        subjects=["jobs.*.*.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        discard=DiscardPolicy.NEW,
        max_msgs=cfg.max_queued_jobs,
        # One queued message per job id for as long as it is queued, beyond the dedupe window.
        max_msgs_per_subject=1,
        discard_new_per_subject=True,
        duplicate_window=cfg.duplicate_window_s,
        # The queued event: the server copies each stored job's headers into EVENTS.
        republish=RePublish(
            src="jobs.*.*.*",
            dest=f"events.{{{{wildcard(1)}}}}.{{{{wildcard(3)}}}}.queued.{QUEUE_PUBLISHER}",
            headers_only=True,
        ),
    )


def jobs_consumer_config(cfg: TopologyConfig) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=JOBS_CONSUMER,
        description="the controller's dispatcher pulls jobs here, one per waiting agent",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_deliver=cfg.max_deliver,
        max_ack_pending=cfg.max_ack_pending,
        max_waiting=4096,
    )


def _events_stream_config(cfg: TopologyConfig) -> StreamConfig:
    return _events_like(cfg, name=EVENTS_STREAM, subjects=["events.*.*.*.*"],
                        description=("vidfleet job events: "
                                     "events.<tenant>.<job_id>.<kind>.<publisher>"),
                        max_bytes=cfg.events_max_bytes, duplicate_window=120.0)


def _events_like(cfg: TopologyConfig, *, name: str, description: str,
                 max_bytes: int, **where: object) -> StreamConfig:
    """EVENTS and each tenant's copy keep events alike: a week, a bounded number per job
    and kind, a bounded number of bytes, the oldest going first."""
    return StreamConfig(
        name=name,
        description=description,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        discard=DiscardPolicy.OLD,
        max_age=cfg.events_max_age_s,
        max_msgs_per_subject=cfg.max_events_per_job_kind,
        max_bytes=max_bytes,
        allow_direct=True,
        **where,  # type: ignore[arg-type]
    )


def _exhausted_stream_config(cfg: TopologyConfig) -> StreamConfig:
    return StreamConfig(
        name=EXHAUSTED_STREAM,
        description="MAX_DELIVERIES advisories of the agents' consumer, for the reaper",
        subjects=[EXHAUSTED_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        max_age=cfg.events_max_age_s,
    )


async def ensure_topology(js: JetStreamContext, cfg: TopologyConfig,
                          tenants: tuple[str, ...] = (DEFAULT_TENANT,)) -> None:
    """Everything the fleet needs, and the object stores of ``tenants`` (by default the one
    every client of a server without auth, and the fleet's own tools, act for)."""
    await ensure_stream(js, jobs_stream_config(cfg))
    await ensure_stream(js, _events_stream_config(cfg))
    await ensure_stream(js, _exhausted_stream_config(cfg))
    await js.add_consumer(EXHAUSTED_STREAM, ConsumerConfig(
        durable_name=EXHAUSTED_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
        max_deliver=-1))
    # CONSUMER.CREATE is create-or-update on the server; a field that cannot change raises.
    # Never delete and recreate it: that forgets which jobs are leased and reruns them.
    await js.add_consumer(JOBS_STREAM, jobs_consumer_config(cfg))
    await ensure_kv(js, KeyValueConfig(
        bucket=JOBSTATE_BUCKET, description="latest lifecycle event per job id", history=1,
        ttl=cfg.events_max_age_s, storage=StorageType.FILE, replicas=cfg.replicas),
        max_bytes=cfg.jobstate_max_bytes)
    await ensure_kv(js, KeyValueConfig(
        bucket=JOB_COSTS_BUCKET, description="each job's ended attempts' machine time, in $",
        history=1, ttl=cfg.events_max_age_s, storage=StorageType.FILE, replicas=cfg.replicas),
        max_bytes=cfg.jobstate_max_bytes)
    await ensure_kv(js, KeyValueConfig(
        bucket=AUTH_BUCKET, description="revoked user keys, until their JWTs expire",
        history=1, storage=StorageType.FILE, replicas=cfg.replicas))
    await ensure_kv(js, KeyValueConfig(
        bucket=FLEET_BUCKET, description="the controller's machines and its last summary",
        history=1, storage=StorageType.FILE, replicas=cfg.replicas))
    await ensure_kv(js, KeyValueConfig(
        bucket=LEASES_BUCKET, description="which agent holds which job (the dispatcher's)",
        history=1, storage=StorageType.FILE, replicas=cfg.replicas))
    await ensure_kv(js, KeyValueConfig(
        bucket=WEBHOOK_SETTINGS_BUCKET, description="each tenant's webhook URL and secret",
        history=1, storage=StorageType.FILE, replicas=cfg.replicas))
    await ensure_kv(js, KeyValueConfig(
        bucket=WEBHOOK_JOBS_BUCKET, description="jobs' webhook URLs and delivery attempts",
        history=1, ttl=cfg.events_max_age_s, storage=StorageType.FILE, replicas=cfg.replicas),
        max_bytes=cfg.jobstate_max_bytes)
    await ensure_kv(js, KeyValueConfig(
        bucket=RESULT_CACHE_BUCKET, description="the fleet's build and cached results",
        history=1, ttl=cfg.results_max_age_s, storage=StorageType.FILE,
        replicas=cfg.replicas), max_bytes=cfg.jobstate_max_bytes)
    await ensure_kv(js, KeyValueConfig(
        bucket=DEAD_LETTERS_BUCKET, description="jobs that failed for good, kept for a retry",
        history=1, ttl=cfg.dead_letter_max_age_s, storage=StorageType.FILE,
        replicas=cfg.replicas), max_bytes=cfg.dead_letters_max_bytes)
    await ensure_object_store(js, DEAD_LETTER_INPUTS_BUCKET, ObjectStoreConfig(
        description="the obj: inputs of dead letters, <tenant>/<job_id>/<name>",
        ttl=cfg.dead_letter_max_age_s, storage=StorageType.FILE, replicas=cfg.replicas,
        max_bytes=cfg.dead_letter_inputs_max_bytes))
    for tenant in tenants:
        await ensure_tenant(js, cfg, tenant)


def tenant_events_config(cfg: TopologyConfig, tenant: str) -> StreamConfig:
    return _events_like(
        cfg, name=tenant_events_stream(tenant),
        description=f"tenant {tenant}'s events, sourced from {EVENTS_STREAM}",
        sources=[StreamSource(name=EVENTS_STREAM, filter_subject=f"events.{tenant}.>")],
        max_bytes=cfg.tenant_events_max_bytes, max_consumers=cfg.tenant_max_consumers)


async def ensure_tenant(js: JetStreamContext, cfg: TopologyConfig, tenant: str, *,
                        resize: bool = False) -> None:
    """The tenant's own events stream and input and result object stores. (An object store
    cannot forbid rollups, so each is reachable only by its tenant, and by agents.) A new
    bucket gets ``cfg``'s quotas (replicas: JOBS's), an existing one keeps its own unless
    ``resize``."""
    cfg = structs.replace(cfg, replicas=await replicas_in_use(js, cfg.replicas))
    await ensure_stream(js, tenant_events_config(cfg, tenant))
    for bucket, max_age_s, max_bytes in (
            (inputs_bucket(tenant), cfg.inputs_max_age_s, cfg.tenant_inputs_max_bytes),
            (results_bucket(tenant), cfg.results_max_age_s, cfg.tenant_results_max_bytes)):
        try:
            await js.object_store(bucket)
        except NotFoundError:
            await js.create_object_store(
                bucket,
                ObjectStoreConfig(ttl=max_age_s, storage=StorageType.FILE,
                                  replicas=cfg.replicas, max_bytes=max_bytes),
            )
        else:
            if not resize:
                continue
        current = (await js.stream_info(f"OBJ_{bucket}")).config
        wanted = (max_bytes, cfg.tenant_bucket_max_consumers)
        if (current.max_bytes, current.max_consumers) != wanted:
            await js.update_stream(current.evolve(max_bytes=wanted[0], max_consumers=wanted[1]))
