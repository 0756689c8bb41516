"""A consumer process for the multi-process SQLite queue tests:
`python -m tests.contract.queue_consumer DB QUEUE OUT DONE [--visibility S] [--stall-after N]`.

Receives and deletes until the DONE file exists and the queue is empty, appending each deleted body to OUT
(after the delete). With `--stall-after N` it stops deleting once N messages are done: it takes one more
batch, writes `STALLED` to OUT and sleeps holding it, for the test to SIGKILL it mid-batch."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TextIO

from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue


async def consume(db: Path, name: str, log: TextIO, done: Path, visibility: float, stall_after: int | None) -> None:
    database = await SqliteDatabase.open(db)
    queue = SqliteQueue(database, name, visibility_timeout=visibility)
    deleted = 0
    try:
        while True:
            messages = await queue.receive(10, wait_seconds=0.2)
            if messages and stall_after is not None and deleted >= stall_after:
                log.write("STALLED\n")
                log.flush()
                await asyncio.sleep(3600)
            if messages:
                await queue.delete_batch([m.receipt for m in messages])
                log.writelines(f"{m.body}\n" for m in messages)
                log.flush()
                deleted += len(messages)
            elif await asyncio.to_thread(done.exists):
                stats = await queue.stats()
                if stats.visible == stats.in_flight == 0:
                    return
    finally:
        await database.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("queue")
    parser.add_argument("out", type=Path)
    parser.add_argument("done", type=Path)
    parser.add_argument("--visibility", type=float, default=30.0)
    parser.add_argument("--stall-after", type=int)
    args = parser.parse_args()
    with open(args.out, "a", encoding="utf-8") as log:
        asyncio.run(consume(args.db, args.queue, log, args.done, args.visibility, args.stall_after))


if __name__ == "__main__":
    main()
