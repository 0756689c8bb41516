"""`facerec worker` processes on the local (SQLite + directory) data tier with a fake model: a worker
killed with SIGKILL mid-batch loses nothing, and a request that kills every worker ends in the DLQ."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from facerec import backend
from facerec.messages import RecognitionResponse, parse_request
from tests.worker.fakes import HARD_POISON, PEOPLE, collect, photo_of, submit
from tests.worker.processes import local_settings, wait_for_path, worker_process

pytestmark = pytest.mark.slow


async def test_sigkill_mid_batch_loses_nothing(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    names = [list(PEOPLE)[i % len(PEOPLE)] for i in range(20)]
    async with backend.open_data_tier(settings) as data:
        requests = [await submit(data, f"k{i}.jpg", photo_of(name)) for i, name in enumerate(names)]
        expected = {req.id: name for req, name in zip(requests, names, strict=True)}

        with worker_process(settings, tmp_path, "doomed", delay_s=0.2) as doomed:
            await wait_for_path(tmp_path / "doomed.batch", doomed)
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(5) == -signal.SIGKILL
        with worker_process(settings, tmp_path, "heir") as heir:
            responses = await collect(data, set(expected), within_s=30)
            assert heir.poll() is None
            heir.send_signal(signal.SIGTERM)
            assert heir.wait(15) == 0

        # Each request answered at least once; duplicates (a batch answered before the kill) agree.
        answers: dict[str, set[str]] = {}
        for response in responses:
            assert response.result is not None, response
            answers.setdefault(response.id, set()).add(response.result.name)
        assert answers == {request_id: {name} for request_id, name in expected.items()}
        for request in requests:
            assert await data.outputs.get(request.output_key) == expected[request.id].encode()
        stats = await data.requests.stats()
        assert (stats.visible, stats.in_flight) == (0, 0)


async def test_message_that_kills_every_worker_ends_in_the_dlq(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, max_receives=2, visibility_timeout_s=0.5)
    async with backend.open_data_tier(settings) as data:
        good = [await submit(data, f"g{i}.jpg", photo_of("Ana")) for i in range(3)]
        poison = await submit(data, "poison.jpg", HARD_POISON)

        # Restart the worker each time the poison kills it, as the fleet would; bounded, not a crash loop.
        good_ids = {req.id for req in good}
        answered: list[RecognitionResponse] = []
        exits: list[int] = []
        settled = False
        deadline = time.monotonic() + 40
        while not settled and time.monotonic() < deadline:
            with worker_process(settings, tmp_path, f"w{len(exits)}") as process:
                while process.poll() is None and not settled and time.monotonic() < deadline:
                    answered += await collect(data, good_ids, within_s=0.5)
                    in_dlq = (await data.dead_letters.stats()).visible
                    settled = len({r.id for r in answered}) + in_dlq >= len(good) + 1
                if process.poll() is not None:
                    exits.append(process.returncode)
        dead = {parse_id(m.body) for m in await data.dead_letters.receive(10, wait_seconds=1)}

    assert exits and all(code == 3 for code in exits)
    assert len(exits) <= settings.max_receives
    assert poison.id in dead and poison.id not in {r.id for r in answered}
    # A bystander received together with the poison on its last delivery can share its fate (the web tier
    # answers dead-lettered requests); processed alone, it is answered first when it comes first.
    assert {r.id for r in answered} | dead == good_ids | {poison.id}
    assert all(r.result is not None and r.result.name == "Ana" for r in answered)


def parse_id(body: str) -> str:
    return parse_request(body).id
