"""A bucket as a directory: one file per key, `/` in keys as sub-directories, atomic writes.

`put` writes a temporary file next to the target and `os.replace`s it, so readers in other processes see the
old object or the new one, never half of one. With `durable` (the gallery store by default, setting
`durable_writes`) the file is fsynced before the rename and its directory after it (and any directory the put
created), so an object `put` returned for survives a power cut whole: without it, a crash could bring a record
back empty. Deletes are not fsynced: a delete lost in a power cut leaves an object that was already going away.

Keys are checked lexically and then by resolved path, so none can leave the root (`..`, absolute
paths, backslashes, NUL, symlinks planted inside the root). Empty sub-directories left by `delete` are kept:
removing them would race with a concurrent `put` into the same directory.

Objects up to INLINE_MAX_BYTES are read (and, when not durable, written) on the event loop; larger ones, and
every durable write (an fsync waits for the disk), in a worker thread. Measured
with the web tier under 100 concurrent clients (fake worker, SQLite queues): every blob operation in a thread
gave 500 requests/s, small ones inline 800 requests/s; a 20 KB put takes about 120 us, while the thread hops
(and GIL hand-offs) under load cost more than the IO itself.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import re
import uuid
from pathlib import Path

from facerec.ports import BlobNotFound, InvalidKey, PortError

KEY_MAX_BYTES = 1024
_TEMP_NAME = re.compile(r"^\.~[0-9a-f]{32}\.tmp$")
INLINE_MAX_BYTES = 256 * 1024
"""Objects this small are read and written without a thread hop (photos from the course are 2 KB)."""
_PUT_ATTEMPTS = 3


def _temp_name() -> str:
    return f".~{uuid.uuid4().hex}.tmp"


def validate_key(key: str) -> list[str]:
    """The key's path components; raises InvalidKey for anything that is not a plain relative path."""
    if not key or len(key.encode("utf-8", "surrogatepass")) > KEY_MAX_BYTES:
        raise InvalidKey(f"key must be 1..{KEY_MAX_BYTES} bytes")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"key contains NUL or backslash: {key!r}")
    parts = key.split("/")
    for part in parts:
        # Empty and dot components would alias other keys on a filesystem ("a//b", "a/./b") or escape.
        if part in ("", ".", "..") or _TEMP_NAME.match(part):
            raise InvalidKey(f"key is not a plain relative path: {key!r}")
    return parts


class LocalBlobStore:
    """`root` is this bucket's own directory (the backend uses `data_dir/blobs/<bucket>`); it must exist."""

    def __init__(self, root: Path, name: str, durable: bool = True) -> None:
        self.root = root
        self.name = name
        self.durable = durable

    def _path(self, key: str) -> Path:
        """Filesystem calls (resolve): run on a worker thread, like the IO itself."""
        parts = validate_key(key)
        root = self.root.resolve()
        path = root.joinpath(*parts)
        # Lexically clean, but a symlinked directory inside the root could still point elsewhere.
        if not path.resolve().is_relative_to(root):
            raise InvalidKey(f"key resolves outside the store: {key!r}")
        return path

    def _root_error(self, exc: OSError) -> PortError:
        if not self.root.is_dir():
            return PortError(f"blob store {self.name}: directory {self.root} is missing (or not a directory)")
        return PortError(f"blob store {self.name}: cannot use {self.root}: {exc.strerror or exc}")

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        if len(data) <= INLINE_MAX_BYTES and not self.durable:
            self._write(key, bytes(data))
        else:
            await asyncio.to_thread(self._write, key, bytes(data))

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        for attempt in range(_PUT_ATTEMPTS):
            temporary = path.parent / _temp_name()
            try:
                created = False
                if path.parent != self.root and not path.parent.is_dir():
                    if not self.root.is_dir():
                        raise FileNotFoundError(errno.ENOENT, "missing", str(self.root))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    created = True
                with open(temporary, "xb") as handle:
                    handle.write(data)
                    if self.durable:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(temporary, path)
                if self.durable:
                    self._sync_directories(path.parent, created)
                return
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                _unlink_quietly(temporary)
                if not self.root.is_dir():
                    raise self._root_error(exc) from exc
                raise InvalidKey(f"key conflicts with an existing key or prefix: {path.name!r}") from exc
            except FileNotFoundError as exc:
                _unlink_quietly(temporary)
                # A parent directory vanished between mkdir and open (only if something else removed it).
                if attempt + 1 == _PUT_ATTEMPTS or not self.root.is_dir():
                    raise self._root_error(exc) from exc
            except OSError as exc:
                _unlink_quietly(temporary)
                if exc.errno == errno.ENAMETOOLONG:
                    raise InvalidKey(f"a key component is too long for the filesystem: {path.name!r}") from exc
                raise self._root_error(exc) from exc

    def _sync_directories(self, directory: Path, created: bool) -> None:
        """fsync the directory holding the new name; after a mkdir also each parent up to the root, whose entries
        name the new directories."""
        while True:
            _fsync_directory(directory)
            if not created or directory == self.root or directory == directory.parent:
                return
            directory = directory.parent

    async def get(self, key: str) -> bytes:
        validate_key(key)
        if self._is_small(key):
            return self._read(key)
        return await asyncio.to_thread(self._read, key)

    def _is_small(self, key: str) -> bool:
        try:
            return self._path(key).stat().st_size <= INLINE_MAX_BYTES
        except OSError:
            return True  # missing or unreadable: `_read` raises the right error at once

    def _read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not self.root.is_dir():
                raise self._root_error(exc) from exc
            raise BlobNotFound(key) from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise BlobNotFound(key) from None
            raise self._root_error(exc) from exc

    async def delete(self, key: str) -> None:
        validate_key(key)
        await asyncio.to_thread(self._remove, key)

    def _remove(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if not self.root.is_dir():
                raise self._root_error(FileNotFoundError(errno.ENOENT, "missing")) from None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise self._root_error(exc) from exc

    async def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        keys = await asyncio.to_thread(self._keys, prefix)
        return keys if limit is None else keys[:limit]

    async def count(self, prefix: str = "") -> int:
        return len(await asyncio.to_thread(self._keys, prefix))

    def _keys(self, prefix: str) -> builtins.list[str]:
        if not self.root.is_dir():
            raise self._root_error(FileNotFoundError(errno.ENOENT, "missing"))
        # Walk only the directory the prefix names (up to its last `/`), not the whole bucket.
        directory_part, _, _ = prefix.rpartition("/")
        start = self.root
        if directory_part:
            try:
                start = self._path(directory_part)
            except InvalidKey:
                return []
        keys: list[str] = []
        # os.walk does not follow symlinked directories, so a listing never leaves the root either.
        for directory, subdirectories, files in os.walk(start):
            relative = os.path.relpath(directory, self.root)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                subdirectories.clear()
                continue
            keys.extend(
                base + name for name in files if not _TEMP_NAME.match(name) and (base + name).startswith(prefix)
            )
        keys.sort()
        return keys

    async def check(self) -> None:
        await asyncio.to_thread(self._probe)

    def _probe(self) -> None:
        # Really write: permission bits say nothing for root, or on a read-only mount.
        probe = self.root / _temp_name()
        try:
            with open(probe, "xb") as handle:
                handle.write(b"ok")
        except OSError as exc:
            raise self._root_error(exc) from exc
        finally:
            _unlink_quietly(probe)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        return
