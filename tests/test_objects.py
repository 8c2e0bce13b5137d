"""Object transfer: many batches, verified, a corrupt object refused, a name written again
replaced, a full or missing bucket named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from nats.js.api import ObjectStoreConfig

from broker.object_writes import upload
from broker.objects import (
    CHUNK_SIZE_BYTES,
    ObjectCorrupt,
    ObjectMissing,
    StoreFull,
    digest_hex,
    download,
    object_info,
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


async def test_writing_a_name_again_replaces_the_object_and_purges_its_chunks(
        js, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(CHUNK_SIZE_BYTES * 3))
    first = await upload(js, "inputs-default", "again/src.bin", src)
    src.write_bytes(b"second")
    second = await upload(js, "inputs-default", "again/src.bin", src)
    got = await download(js, "inputs-default", "again/src.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"second" and got.nuid == second.nuid
    state = (await js.stream_info("OBJ_inputs-default",
                                  subjects_filter=f"$O.inputs-default.C.{first.nuid}")).state
    assert not state.subjects  # the first object's three chunks are gone


async def test_a_missing_bucket_is_named(js, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    with pytest.raises(ObjectMissing, match="no object store 'nowhere'"):
        await upload(js, "nowhere", "x.bin", src)
    with pytest.raises(ObjectMissing, match="no object store 'nowhere'"):
        await object_info(js, "nowhere", "x.bin")


async def test_a_full_bucket_is_said_and_the_partial_object_removed(js, tmp_path: Path) -> None:
    """Chunks go out up to 16 at a time, so the refusal comes back a few chunks late: it is
    still StoreFull, raised by a later chunk or by the commit, and nothing is left."""
    await js.create_object_store("tiny", ObjectStoreConfig(max_bytes=CHUNK_SIZE_BYTES * 4))
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(CHUNK_SIZE_BYTES * 6))
    with pytest.raises(StoreFull, match="bucket 'tiny' is full"):
        await upload(js, "tiny", "big.bin", src)
    assert (await js.stream_info("OBJ_tiny")).state.messages == 0
    src.write_bytes(os.urandom(CHUNK_SIZE_BYTES * 2))  # what fits still goes in
    await upload(js, "tiny", "small.bin", src)
    with pytest.raises(ObjectMissing):
        await object_info(js, "tiny", "big.bin")


async def test_a_one_chunk_object_whose_chunk_is_gone_is_corrupt_at_once(
        js, tmp_path: Path) -> None:
    """(A one-chunk object is read by one direct get: its loss is said, not waited out.)"""
    src = tmp_path / "src.bin"
    src.write_bytes(b"subtitles")
    info = await upload(js, "inputs-default", "gone/src.srt", src)
    await js.purge_stream("OBJ_inputs-default", subject=f"$O.inputs-default.C.{info.nuid}")
    with pytest.raises(ObjectCorrupt, match="got 0 bytes, expected 9"):
        await download(js, "inputs-default", "gone/src.srt", tmp_path / "out.srt",
                       chunk_timeout_s=60)
