"""BlobStore contract: memory (the reference), the local directory store, and S3 on moto."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facerec.adapters.local_blob import LocalBlobStore
from facerec.ports import BlobNotFound, BlobStore, InvalidKey, PortError


async def test_is_a_blob_store(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)
    await blob_store.check()


async def test_put_get_overwrite(blob_store: BlobStore) -> None:
    await blob_store.put("photo.jpg", b"\xff\xd8first", "image/jpeg")
    assert await blob_store.get("photo.jpg") == b"\xff\xd8first"
    await blob_store.put("photo.jpg", b"second")
    assert await blob_store.get("photo.jpg") == b"second"
    await blob_store.put("empty", b"")
    assert await blob_store.get("empty") == b""


async def test_missing_key_and_idempotent_delete(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await blob_store.get("nothing-here")
    await blob_store.delete("nothing-here")
    await blob_store.put("gone", b"x")
    await blob_store.delete("gone")
    with pytest.raises(BlobNotFound):
        await blob_store.get("gone")
    assert await blob_store.count() == 0


async def test_list_and_count_with_prefixes(blob_store: BlobStore) -> None:
    keys = ["b.jpg", "a/2", "a/1", "a/sub/3", "ab", "z-ü.png"]
    for key in keys:
        await blob_store.put(key, key.encode())
    assert await blob_store.list() == sorted(keys)
    assert await blob_store.list("a") == ["a/1", "a/2", "a/sub/3", "ab"]
    assert await blob_store.list("a/") == ["a/1", "a/2", "a/sub/3"]
    assert await blob_store.list("a/s") == ["a/sub/3"]
    assert await blob_store.list("a/", limit=2) == ["a/1", "a/2"]
    assert await blob_store.list("missing/") == []
    assert await blob_store.count() == len(keys)
    assert await blob_store.count("a/") == 3
    assert await blob_store.get("a/sub/3") == b"a/sub/3"


@pytest.mark.parametrize("key", ["", "k" * 1025], ids=["empty", "1025-chars"])
async def test_rejects_empty_and_over_long_keys(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await blob_store.put(key, b"x")


async def test_key_limit_counts_utf8_bytes_as_s3_does(tmp_path: Path) -> None:
    # 513 two-byte characters: 1026 bytes. (MemoryBlobStore counts characters; S3 and the local store bytes.)
    store = LocalBlobStore(tmp_path, "bucket")
    with pytest.raises(InvalidKey):
        await store.put("é" * 513, b"x")
    await store.put("é" * 100, b"x")


def tree(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*"))


ESCAPES = ["../outside", "a/../../outside", "/etc/passwd", "..", ".", "a/./b", "a//b", "a/", "a\\..\\b", "nul\x00"]


@pytest.mark.parametrize("key", ESCAPES, ids=repr)
async def test_local_keys_never_escape_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    store = LocalBlobStore(root, "bucket")
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    assert tree(tmp_path) == ["bucket"]


async def test_local_symlink_inside_the_root_cannot_lead_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "bucket", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside, root / "link")
    store = LocalBlobStore(root, "bucket")
    with pytest.raises(InvalidKey):
        await store.get("link/secret")
    with pytest.raises(InvalidKey):
        await store.put("link/new", b"x")
    assert await store.list() == []
    assert not (outside / "new").exists()


async def test_local_key_and_prefix_conflict_is_an_invalid_key(tmp_path: Path) -> None:
    # S3 allows both `a` and `a/b`; a directory store cannot, and says so instead of failing obscurely.
    store = LocalBlobStore(tmp_path, "bucket")
    await store.put("a", b"file")
    with pytest.raises(InvalidKey):
        await store.put("a/b", b"x")
    await store.put("d/e", b"x")
    with pytest.raises(InvalidKey):
        await store.put("d", b"x")
    assert await store.list() == ["a", "d/e"]


async def test_local_put_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, "bucket")
    for i in range(20):
        await store.put(f"k/{i % 3}", bytes([i]) * 1000)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["0", "1", "2"]
    assert await store.get("k/1") == bytes([19]) * 1000


async def test_local_missing_or_unusable_root_is_a_port_error_naming_the_path(tmp_path: Path) -> None:
    missing = LocalBlobStore(tmp_path / "missing", "bucket")
    for call in (missing.check(), missing.put("k", b"x"), missing.get("k"), missing.list()):
        with pytest.raises(PortError, match="missing"):
            await call
    # A file where the directory should be: unusable for root and non-root users alike.
    (tmp_path / "file").write_bytes(b"")
    blocked = LocalBlobStore(tmp_path / "file", "bucket")
    with pytest.raises(PortError, match=str(tmp_path / "file")):
        await blocked.check()
    with pytest.raises(PortError, match=str(tmp_path / "file")):
        await blocked.put("k", b"x")
