"""The result cache: a job whose inputs (by content), parameters and agent build match a job of
the same tenant that succeeded gets that job's result at once, at no cost, and rents nothing.

    KV resultcache, key build            the build the fleet runs now: the last one an agent
                                         stated when it asked for work (gpu_agent/build.py)
    KV resultcache, key <tenant>.<key>   a CacheEntry: the job that made the result
    JOBS header Vidfleet-Cache-Key       the gateway's key for a queued job; the dispatcher
                                         records the job's result under it when it succeeds

The gateway answers a cached job itself: a ``queued`` event (``Nats-Sequence`` 0: it never
entered JOBS), then ``succeeded`` with ``cached`` true, ``cached_from`` the job that made the
result, and ``cost_usd`` 0. The key is over the operation and every field of the job, with each
``obj:`` input replaced by its SHA-256 (the webhook and the ``cache`` flag left out). A job
with a URL input is never cached (its content is unknown until fetched), nor one with
``cache: false``. The build is the agents' word (an agent's credentials are assumed stolen):
an agent that forges a result for the job it holds gets it served to later identical jobs of
that tenant too; ``cache: false`` is the way out for a tenant who will not take that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import msgspec
from msgspec import Struct

from broker.events import OutputInfo
from broker.jobs import JobRequest, parse_input_ref

__all__ = ["BUILD_KEY", "CACHE_KEY_HEADER", "CacheEntry", "cache_key", "cacheable",
           "decode_entry", "encode", "entry_key"]

CACHE_KEY_HEADER = "Vidfleet-Cache-Key"
BUILD_KEY = "build"


class CacheEntry(Struct, frozen=True, kw_only=True):
    job_id: str  # the job whose result this is
    build: str  # the agent build that made it
    encoder: str
    output: OutputInfo
    at: float  # when it succeeded


def entry_key(tenant: str, key: str) -> str:
    return f"{tenant}.{key}"


def cacheable(job: JobRequest) -> bool:
    """Whether the job may be answered from the cache: it allows it and reads no URL."""
    return job.cache and not any(
        isinstance(value, str) and value.startswith(("http://", "https://"))
        for name, value in msgspec.structs.asdict(job).items() if name != "webhook")


def cache_key(operation: str, job: JobRequest, digests: Mapping[str, str]) -> str | None:
    """The job's key (hex), or None when it is not cached: it says ``cache: false``, reads a
    URL, or names an object ``digests`` (name -> SHA-256 hex) lacks."""
    if not cacheable(job):
        return None
    fields = msgspec.to_builtins(job)
    fields.pop("webhook", None)
    fields.pop("cache", None)
    for name, value in fields.items():
        if not isinstance(value, str) or not value.startswith(("obj:", "http://", "https://")):
            continue
        kind, where = parse_input_ref(value)
        if kind != "object" or where not in digests:
            return None
        fields[name] = f"sha256:{digests[where]}"
    canonical = json.dumps({"operation": operation, "job": fields}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_ENCODER = msgspec.json.Encoder()
_ENTRY = msgspec.json.Decoder(CacheEntry)


def encode(entry: CacheEntry) -> bytes:
    return _ENCODER.encode(entry)


def decode_entry(data: bytes) -> CacheEntry:
    return _ENTRY.decode(data)
