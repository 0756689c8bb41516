"""Keeps a worker's recognizer in step with the people enrolled in the gallery store.

Every `gallery_refresh_s` it lists the embedding records (one cheap listing), fetches only the new ones,
and hands the recognizer the current set; people deleted through the API disappear the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from facerec.people import EMBEDDINGS, EmbeddingRecord, parse_embedding_key
from facerec.ports import BlobNotFound, BlobStore, PortError
from facerec.recognition.results import Enroller

log = logging.getLogger(__name__)


class GallerySync:
    def __init__(self, store: BlobStore, recognizer: Enroller, interval_s: float) -> None:
        self._store = store
        self._recognizer = recognizer
        self._interval_s = interval_s
        self._records: dict[str, EmbeddingRecord | None] = {}
        """Key -> its record; None for a record this model cannot use (other weights or settings)."""
        self._applied: frozenset[str] | None = None

    async def refresh(self) -> bool:
        """Bring the recognizer up to date; True if its people changed."""
        keys = {key for key in await self._store.list(EMBEDDINGS) if parse_embedding_key(key)}
        for key in set(self._records) - keys:
            del self._records[key]
        fields = self._recognizer.embedding_fields()
        for key in sorted(keys - set(self._records)):
            try:
                record = EmbeddingRecord.model_validate_json(await self._store.get(key))
            except BlobNotFound:
                continue  # deleted between the listing and now
            except ValueError:
                log.warning("gallery_record_invalid", extra={"key": key})
                record = None
            if record is not None and any(getattr(record, name) != value for name, value in fields.items()):
                log.warning("gallery_record_other_model", extra={"key": key, "weights": record.weights})
                record = None
            self._records[key] = record
        current = frozenset(keys)
        if current == self._applied:
            return False
        people: dict[str, list[list[float]]] = {}
        for record in self._records.values():
            if record is not None:
                people.setdefault(record.person, []).append(record.vector())
        self._recognizer.use_enrolled(people)
        self._applied = current
        log.info("gallery_refreshed", extra={"people": len(people), "records": len(keys)})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except PortError as exc:
                log.warning("gallery_refresh_failed", extra={"error": str(exc)[:200]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
