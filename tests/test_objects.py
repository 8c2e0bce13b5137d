"""Object transfer: many batches, verified, and a corrupt object refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker.objects import (
    CHUNK_SIZE_BYTES,
    ObjectCorrupt,
    ObjectMissing,
    digest_hex,
    download,
    upload,
)


async def test_large_object_round_trip_across_batches(js, tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE_BYTES * 150 + 12345)  # 151 chunks: three fetch batches
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    info = await upload(js, "inputs-default", "big/src.bin", src)
    assert info.chunks == 151 and digest_hex(info) == hashlib.sha256(data).hexdigest()
    got = await download(js, "inputs-default", "big/src.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data and got.size == len(data)


async def test_a_corrupt_object_is_refused_and_not_left_behind(js, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    info = await upload(js, "inputs-default", "c/src.bin", src)
    # Someone swaps the chunk behind the store's back: same size, other bytes.
    chunk_subject = f"$O.inputs-default.C.{info.nuid}"
    original = await js.get_last_msg("OBJ_inputs-default", chunk_subject)
    await js.delete_msg("OBJ_inputs-default", original.seq)
    await js.publish(chunk_subject, bytes(1000))
    with pytest.raises(ObjectCorrupt):
        await download(js, "inputs-default", "c/src.bin", tmp_path / "out.bin", chunk_timeout_s=2)
    assert not (tmp_path / "out.bin").exists()


async def test_size_limit_is_checked_before_transfer(js, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5000))
    await upload(js, "inputs-default", "l/src.bin", src)
    with pytest.raises(ValueError, match="over the limit of 100 bytes"):
        await download(js, "inputs-default", "l/src.bin", tmp_path / "o", max_size_bytes=100)
    with pytest.raises(ObjectMissing):
        await download(js, "inputs-default", "l/absent", tmp_path / "o")
