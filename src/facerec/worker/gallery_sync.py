"""Keeps a worker's recognizer in step with the people enrolled in the gallery store.

Every `gallery_refresh_s` it lists the embedding records and the generation markers (two cheap listings),
fetches only the new records, and hands the recognizer the current set; people deleted through the API
disappear the same way. A record is used only if it belongs to its person's current generation (see
`facerec.people`): a record written for a person deleted since can never bring them back, even if it
slipped into the store after the delete. Records under a key whose name is not valid are never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from facerec.logs import error_text
from facerec.people import EMBEDDINGS, EmbeddingRecord, current_generations, parse_embedding_key
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
        self._invalid: set[str] = set()
        """Keys whose record could not be parsed when last read (read again at every refresh)."""

    async def refresh(self) -> bool:
        """Bring the recognizer up to date; True if its people changed."""
        # Generations first: a record listed below and written before a delete is then judged by a generation
        # at least as new as the one it was written for.
        generations = await current_generations(self._store)
        keys = {key for key in await self._store.list(EMBEDDINGS) if parse_embedding_key(key)}
        for key in set(self._records) - keys:
            del self._records[key]
        self._invalid &= keys
        fields = self._recognizer.embedding_fields()
        for key in sorted(keys - set(self._records)):
            record: EmbeddingRecord | None
            try:
                record = EmbeddingRecord.model_validate_json(await self._store.get(key))
            except BlobNotFound:
                continue  # deleted between the listing and now
            except ValueError:
                # Not cached: a record torn or emptied by a crash may be rewritten under the same key, and must
                # then be read again (logged once per key, not at every refresh).
                if key not in self._invalid:
                    log.warning("gallery_record_invalid", extra={"key": key})
                self._invalid.add(key)
                continue
            self._invalid.discard(key)
            if record is not None and any(getattr(record, name) != value for name, value in fields.items()):
                log.warning("gallery_record_other_model", extra={"key": key, "weights": record.weights})
                record = None
            self._records[key] = record
        usable: dict[str, EmbeddingRecord] = {}
        for key, cached in self._records.items():
            parsed = parse_embedding_key(key)
            if cached is None or parsed is None or cached.generation != generations.get(parsed[0]):
                continue  # another model's, or of a generation since superseded by a delete
            usable[key] = cached
        current = frozenset(usable)
        if current == self._applied:
            return False
        people: dict[str, list[list[float]]] = {}
        for key, record in usable.items():
            parsed = parse_embedding_key(key)
            assert parsed is not None
            # Named by the key (what the API lists and deletes), not by the record's own field.
            people.setdefault(parsed[0], []).append(record.vector())
        self._recognizer.use_enrolled(people)
        self._applied = current
        log.info("gallery_refreshed", extra={"people": len(people), "records": len(usable), "listed": len(keys)})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except PortError as exc:
                log.warning("gallery_refresh_failed", extra={"error": error_text(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
