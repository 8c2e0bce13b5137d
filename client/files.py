"""A tenant's files: inputs uploaded to its inputs bucket, results downloaded from its
results bucket and checked against the job's outcome (client/api.py's ``Client`` delegates
here)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from nats.js import JetStreamContext

from broker.events import OutputInfo
from broker.jobs import object_ref
from broker.object_writes import upload
from broker.objects import ObjectCorrupt, digest_hex, download
from broker.subjects import inputs_bucket, results_bucket

__all__ = ["download_result", "upload_input"]


async def upload_input(js: JetStreamContext, tenant: str, path: str | Path,
                       name: str | None = None) -> str:
    """Upload a local file to the tenant's inputs bucket; returns its ``obj:<name>``."""
    path = Path(path)
    name = name or f"{secrets.token_hex(8)}/{re.sub(r'[^A-Za-z0-9._-]+', '_', path.name)}"
    if re.search(r"\s", name):
        raise ValueError(f"object name {name!r} has white space; a job cannot refer to it")
    await upload(js, inputs_bucket(tenant), name, path)
    return object_ref(name)


async def download_result(js: JetStreamContext, tenant: str, output: OutputInfo,
                          dest: str | Path) -> Path:
    """Download a result to ``dest`` (a file path, or a directory to put it in). What is
    written is checked against the outcome's own SHA-256 (and the stored object's) before
    this returns; on a mismatch the file is deleted and ObjectCorrupt raised."""
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / output.name.replace("/", "-")
    if output.bucket != results_bucket(tenant):
        raise ObjectCorrupt(f"the result names bucket {output.bucket!r}, not this "
                            f"tenant's {results_bucket(tenant)!r}")
    info = await download(js, output.bucket, output.name, dest)
    if digest_hex(info) != output.sha256:
        dest.unlink(missing_ok=True)
        raise ObjectCorrupt(f"result {output.name!r} is not the file the job's outcome "
                            "names (SHA-256 differs)")
    return dest
