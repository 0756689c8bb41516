"""`facerec bench queue`: the local SQLite queue's throughput and cross-process wake-up latency.

- round trip, one process: send N messages in batches of 10, then receive 10 / delete 10 until drained.
- drain across processes: the main process sends N messages while `--consumers` processes receive and delete
  them; wall time from the first send to the last delete.
- wake-up: a receiver process waits in `receive(wait_seconds=...)`; the main process sends after a random
  idle gap; latency = the receiver's clock at delivery minus the send time (CLOCK_MONOTONIC is system-wide on
  Linux). Also the waiting receiver's CPU use (its process time over wall time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import click

from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
from facerec.ports import MessageQueue

BATCH = 10
DB_NAME = "bench-queues.sqlite3"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def round_trip(db_path: Path, messages: int) -> dict[str, float]:
    database = await SqliteDatabase.open(db_path)
    try:
        return await queue_round_trip(SqliteQueue(database, "bench-round-trip"), messages)
    finally:
        await database.aclose()


async def queue_round_trip(queue: MessageQueue, messages: int) -> dict[str, float]:
    """Send `messages` in batches of 10, then receive and delete 10 at a time until drained."""
    started = time.perf_counter()
    for start in range(0, messages, BATCH):
        await queue.send_batch([f"m{i}" for i in range(start, min(messages, start + BATCH))])
    sent = time.perf_counter()
    done = 0
    while done < messages:
        batch = await queue.receive(BATCH, wait_seconds=1)
        await queue.delete_batch([m.receipt for m in batch])
        done += len(batch)
    finished = time.perf_counter()
    return {
        "send_msgs_per_s": round(messages / (sent - started)),
        "receive_delete_msgs_per_s": round(messages / (finished - sent)),
        "round_trip_msgs_per_s": round(messages / (finished - started)),
    }


async def moto_comparison(messages: int, samples: int) -> dict[str, Any]:
    """The same round trip, and a long-poll wake-up, against moto's server through the SQS adapter."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return {"skipped": "moto is not installed (pip install -e '.[test]')"}
    from facerec.adapters.aws_session import AwsClients
    from facerec.adapters.sqs_queue import SqsQueue
    from facerec.settings import Settings

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        boto3.client(
            "sqs",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 (moto accepts any credentials)
            region_name="us-east-1",
        ).create_queue(QueueName="bench-moto")
        settings = Settings(backend="aws", aws_endpoint_url=endpoint, aws_region="us-east-1")
        for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
            os.environ.setdefault(key, value)
        async with AwsClients(settings) as aws:
            queue = await SqsQueue.from_name(aws, "bench-moto")
            results: dict[str, Any] = await queue_round_trip(queue, messages)
            delays = []
            for _ in range(samples):
                waiting = asyncio.create_task(queue.receive(1, wait_seconds=5))
                await asyncio.sleep(0.2)
                sent_at = time.perf_counter()
                await queue.send("wake")
                (message,) = await waiting
                delays.append((time.perf_counter() - sent_at) * 1000)
                await queue.delete_batch([message.receipt])
            results.update(
                messages=messages,
                wake_median_ms=round(statistics.median(delays), 2),
                wake_p90_ms=round(_percentile(delays, 0.9), 2),
            )
            return results
    finally:
        server.stop()


def _consumer(db_path: str, queue_name: str, results: Connection) -> None:
    async def run() -> int:
        database = await SqliteDatabase.open(Path(db_path))
        queue = SqliteQueue(database, queue_name)
        done = 0
        try:
            results.send("ready")
            while True:
                batch = await queue.receive(BATCH, wait_seconds=0.5)
                if not batch:
                    stats = await queue.stats()
                    if stats.visible == 0 and stats.in_flight == 0 and await _all_sent(database, queue_name):
                        return done
                    continue
                await queue.delete_batch([m.receipt for m in batch])
                done += len(batch)
        finally:
            await database.aclose()

    results.send(asyncio.run(run()))


async def _all_sent(database: SqliteDatabase, queue_name: str) -> bool:
    # The producer marks the end with a message in a side queue: an empty queue before that is not the end.
    return (await SqliteQueue(database, queue_name + "-sent").stats()).visible >= 1


async def drain_across_processes(db_path: Path, messages: int, consumers: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(consumers)]
    name = "bench-drain"
    processes = [
        context.Process(target=_consumer, args=(str(db_path), name, writer), daemon=True) for _, writer in pipes
    ]
    for process in processes:
        process.start()
    for reader, _ in pipes:
        await asyncio.to_thread(reader.recv)  # "ready"
    database = await SqliteDatabase.open(db_path)
    try:
        queue = SqliteQueue(database, name)
        started = time.perf_counter()
        for start in range(0, messages, BATCH):
            await queue.send_batch([f"m{i}" for i in range(start, min(messages, start + BATCH))])
        await SqliteQueue(database, name + "-sent").send("all sent")
        counts = [await asyncio.to_thread(reader.recv) for reader, _ in pipes]
        elapsed = time.perf_counter() - started
    finally:
        await database.aclose()
        for process in processes:
            process.join(5)
    return {
        "consumers": consumers,
        "messages": sum(counts),
        "drain_msgs_per_s": round(sum(counts) / elapsed),
        "per_consumer": counts,
    }


def _wake_receiver(db_path: str, samples: int, results: Connection) -> None:
    async def run() -> None:
        database = await SqliteDatabase.open(Path(db_path))
        queue = SqliteQueue(database, "bench-wake")
        try:
            results.send("ready")
            cpu_started, wall_started = time.process_time(), time.monotonic()
            for _ in range(samples):
                [message] = await queue.receive(1, wait_seconds=20)
                results.send(time.monotonic() - float(message.body))
                await queue.delete_batch([message.receipt])
            results.send((time.process_time() - cpu_started) / (time.monotonic() - wall_started))
        finally:
            await database.aclose()

    asyncio.run(run())


async def wake_up_latency(db_path: Path, samples: int, max_gap_s: float) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_wake_receiver, args=(str(db_path), samples, writer), daemon=True)
    process.start()
    await asyncio.to_thread(reader.recv)  # "ready"
    database = await SqliteDatabase.open(db_path)
    latencies: list[float] = []
    try:
        queue = SqliteQueue(database, "bench-wake")
        for _ in range(samples):
            # Random idle gaps: some sends find the receiver polling fast, most after it backed off.
            await asyncio.sleep(random.uniform(0.02, max_gap_s))
            await queue.send(repr(time.monotonic()))
            latencies.append(await asyncio.to_thread(reader.recv))
        receiver_cpu = float(await asyncio.to_thread(reader.recv))
    finally:
        await database.aclose()
        process.join(5)
    milliseconds = [latency * 1000 for latency in latencies]
    return {
        "samples": samples,
        "median_ms": round(statistics.median(milliseconds), 2),
        "p90_ms": round(_percentile(milliseconds, 0.9), 2),
        "max_ms": round(max(milliseconds), 2),
        "waiting_receiver_cpu_percent": round(receiver_cpu * 100, 2),
    }


async def run_all(
    directory: Path, messages: int, consumers: int, samples: int, max_gap_s: float, moto_messages: int
) -> dict[str, Any]:
    return {
        "round_trip": await round_trip(directory / DB_NAME, messages),
        "drain": await drain_across_processes(directory / f"drain-{DB_NAME}", messages, consumers),
        "wake_up": await wake_up_latency(directory / f"wake-{DB_NAME}", samples, max_gap_s),
        "moto": await moto_comparison(moto_messages, min(samples, 10)) if moto_messages else {"skipped": "--moto 0"},
    }


@click.command()
@click.option("--messages", default=5000, show_default=True, help="Messages for the throughput runs.")
@click.option("--consumers", default=4, show_default=True, help="Consumer processes draining the queue.")
@click.option("--samples", default=50, show_default=True, help="Wake-up latency samples.")
@click.option("--max-gap", default=0.3, show_default=True, help="Longest idle gap before a wake-up send (s).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the bench databases go (default: a fresh temporary directory).",
)
@click.option("--moto", "moto_messages", default=300, show_default=True, help="Messages for moto (0: skip it).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results here.")
def command(
    messages: int,
    consumers: int,
    samples: int,
    max_gap: float,
    data_dir: Path | None,
    moto_messages: int,
    json_out: Path | None,
) -> None:
    """Measure the local SQLite queue: throughput with batches of 10, and wake-up latency across processes."""
    with tempfile.TemporaryDirectory(prefix="facerec-bench-queue-") as temporary:
        directory = data_dir or Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run_all(directory, messages, consumers, samples, max_gap, moto_messages))
    trip, drain, wake = results["round_trip"], results["drain"], results["wake_up"]
    click.echo(
        f"round trip (1 process, batches of {BATCH}): send {trip['send_msgs_per_s']} msg/s, "
        f"receive+delete {trip['receive_delete_msgs_per_s']} msg/s, round trip {trip['round_trip_msgs_per_s']} msg/s"
    )
    click.echo(f"drain by {drain['consumers']} processes: {drain['drain_msgs_per_s']} msg/s {drain['per_consumer']}")
    click.echo(
        f"wake-up across processes: median {wake['median_ms']} ms, p90 {wake['p90_ms']} ms, max {wake['max_ms']} ms "
        f"(waiting receiver CPU {wake['waiting_receiver_cpu_percent']}%)"
    )
    moto = results["moto"]
    if "skipped" in moto:
        click.echo(f"moto: skipped ({moto['skipped']})")
    else:
        click.echo(
            f"moto server through the SQS adapter, for comparison ({moto['messages']} messages): round trip "
            f"{moto['round_trip_msgs_per_s']} msg/s, wake-up median {moto['wake_median_ms']} ms"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
