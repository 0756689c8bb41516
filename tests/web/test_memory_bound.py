"""Bounded memory: 60 concurrent 9 MB uploads to a real web process keep its peak RSS under 600 MB, and every
answer is 200 or 503 (admission by bytes, FACEREC_MAX_INFLIGHT_BYTES at its default).

The web process runs alone in a subprocess (its peak RSS is the kernel's VmHWM); the fake worker runs in the
test process on the same local data tier, so its reads of the stored images are not counted against the web."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from facerec.backend import open_data_tier
from facerec.settings import Settings
from facerec.testing import InstantWorker
from tests.e2e.processes import free_port

UPLOADS = 60
UPLOAD_BYTES = 9 * 1024 * 1024
RSS_LIMIT_BYTES = 600 * 1024 * 1024

SERVER = """
import sys, uvicorn
from facerec.backend import open_data_tier
from facerec.settings import Settings
from facerec.web.app import create_app
settings = Settings(backend="local", data_dir=sys.argv[1], request_deadline_s=60, web_poll_wait_s=0.5)
app = create_app(settings, open_data_tier)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=None, access_log=False)
"""


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def wait_ready(client: httpx.AsyncClient, url: str, server: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(30):
        while True:
            assert server.poll() is None, "the web process exited"
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


@pytest.fixture
def web_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), str(port)], env=env)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(15)


async def test_sixty_concurrent_nine_megabyte_uploads_stay_under_600_mb(
    tmp_path: Path, web_process: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = web_process
    # JPEG magic then noise: the web tier sniffs only the first bytes; the fake worker never decodes it.
    photo = b"\xff\xd8\xff\xe0" + os.urandom(UPLOAD_BYTES - 4)
    settings = Settings(backend="local", data_dir=tmp_path, web_poll_wait_s=0.5)
    async with (
        open_data_tier(settings) as data,
        httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=UPLOADS)) as client,
    ):
        await wait_ready(client, url, server)
        posts = [
            asyncio.create_task(client.post(f"{url}/", files={"inputFile": (f"p{i}.jpg", photo, "image/jpeg")}))
            for i in range(UPLOADS)
        ]
        # The worker starts only once every upload is stored or refused: all admitted requests wait at once,
        # so a web tier that kept uploads while waiting would hold them all.
        async with asyncio.timeout(60):
            while await data.inputs.count() + sum(post.done() for post in posts) < UPLOADS:  # noqa: ASYNC110 - another process writes it
                await asyncio.sleep(0.1)
        async with InstantWorker(data):
            replies = await asyncio.gather(*posts)
        peak = peak_rss_bytes(server.pid)
    statuses = sorted({reply.status_code for reply in replies})
    assert set(statuses) <= {200, 503}, [reply.text[:200] for reply in replies if reply.status_code not in (200, 503)]
    assert 200 in statuses
    assert all("retry-after" in reply.headers for reply in replies if reply.status_code == 503)
    assert peak < RSS_LIMIT_BYTES, f"peak RSS {peak / 2**20:.0f} MB"
