"""The gallery file in the data tier's gallery store, so that every worker of every backend finds the same one.

Workers on EC2 have no copy of the file `facerec serve --gallery FILE` was given: on the aws backend serve
uploads it to the gallery bucket under `STORE_GALLERY_KEY`, and a worker with no gallery setting loads it
from there at start. `--gallery blob:KEY` names any other key of the gallery store explicitly.
"""

from __future__ import annotations

import asyncio
import logging

from facerec.ports import BlobNotFound
from facerec.settings import Settings

log = logging.getLogger(__name__)

BLOB_PREFIX = "blob:"
STORE_GALLERY_KEY = "gallery-file/gallery.pt"
"""Outside the `photos/`, `embeddings/` and `generations/` namespaces of the people enrolled through the API."""


class GalleryNotInStore(LookupError):
    """`blob:KEY` names a key the gallery store does not have."""


def blob_key(gallery: str | None) -> str | None:
    """`blob:KEY` -> KEY; a file path or None -> None."""
    if gallery is not None and gallery.startswith(BLOB_PREFIX):
        key = gallery[len(BLOB_PREFIX) :].lstrip("/")
        if not key:
            raise ValueError("`blob:` needs a key, e.g. blob:gallery-file/gallery.pt")
        return key
    return None


def store_gallery_key(settings: Settings) -> tuple[str, bool] | None:
    """Which key of the gallery store a worker loads its gallery file from, and whether it must exist:
    `blob:KEY` must; with no gallery set, the aws backend looks for the one serve uploaded."""
    key = blob_key(settings.gallery)
    if key is not None:
        return key, True
    if settings.gallery is None and settings.backend == "aws":
        return STORE_GALLERY_KEY, False
    return None


async def upload_gallery(settings: Settings, data: bytes, key: str = STORE_GALLERY_KEY) -> str:
    """Put a gallery file's bytes into the gallery store; returns where they went (`s3://bucket/key`)."""
    from facerec.backend import open_gallery_store

    async with open_gallery_store(settings) as store:
        await store.put(key, data)
    where = f"s3://{settings.gallery_bucket}/{key}" if settings.backend == "aws" else f"{BLOB_PREFIX}{key}"
    log.info("gallery_uploaded", extra={"key": key, "bytes": len(data), "bucket": settings.gallery_bucket})
    return where


async def _fetch(settings: Settings, key: str) -> bytes | None:
    from facerec.backend import open_gallery_store

    async with open_gallery_store(settings) as store:
        try:
            return await store.get(key)
        except BlobNotFound:
            return None


def fetch_gallery(settings: Settings) -> tuple[str, bytes] | None:
    """The gallery file a worker should load from the store (source name, bytes), or None when there is none
    to load. Raises GalleryNotInStore for a `blob:KEY` that is missing, PortError when the store fails."""
    wanted = store_gallery_key(settings)
    if wanted is None:
        return None
    key, required = wanted
    data = asyncio.run(_fetch(settings, key))
    if data is None:
        if required:
            raise GalleryNotInStore(
                f"gallery {BLOB_PREFIX}{key} is not in the gallery store {settings.gallery_bucket}: upload it with "
                f"`facerec serve --gallery FILE` or use a file path"
            )
        log.info("gallery_not_in_store", extra={"key": key, "bucket": settings.gallery_bucket})
        return None
    return f"{BLOB_PREFIX}{key}", data
