"""Health, readiness, metrics, API docs, graceful shutdown, and the web tier's freedom from torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from facerec.ports import DataTier, WorkerInfo, WorkerState
from facerec.testing import InstantWorker, jpeg_bytes, memory_data_tier
from facerec.web.app import create_app
from tests.web.harness import never_answer, running_web, upload, web_settings

PHOTO = jpeg_bytes((30, 200, 30))


async def test_health_and_readiness() -> None:
    async with running_web() as web:
        health = await web.client.get("/healthz")
        ready = await web.client.get("/readyz")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "inputs": "ok",
        "requests": "ok",
        "responses": "ok",
        "dead_letters": "ok",
        "response_poller": "ok",
    }


class _FakeFleet:
    max_workers = 15

    async def list(self) -> list[WorkerInfo]:
        states = [WorkerState.RUNNING, WorkerState.RUNNING, WorkerState.PENDING, WorkerState.STOPPED]
        return [WorkerInfo(f"w{i}", f"app-tier-instance-{i}", state) for i, state in enumerate(states)]


async def test_metrics_expose_in_flight_latency_statuses_queue_and_workers() -> None:
    async with running_web(answer=never_answer, app_kwargs={"fleet": _FakeFleet()}, request_deadline_s=2) as web:
        await web.client.post("/", **upload(b""))  # a 400
        stuck = asyncio.create_task(web.client.post("/", **upload(PHOTO)))
        async with asyncio.timeout(5):
            while web.in_flight == 0:  # noqa: ASYNC110 - waiting for the request to be registered
                await asyncio.sleep(0.01)
        text = (await web.client.get("/metrics")).text
        stuck.cancel()
    assert "facerec_in_flight_requests 1.0" in text
    assert 'facerec_responses_total{route="/",status="400"} 1.0' in text
    assert 'facerec_request_latency_seconds_count{route="/"} 1.0' in text
    assert "facerec_request_queue_depth 1.0" in text
    assert "facerec_workers 3.0" in text  # pending + running


async def test_openapi_documents_the_upload_field_and_every_error() -> None:
    async with running_web() as web:
        spec = (await web.client.get("/openapi.json")).json()
        docs = await web.client.get("/docs")
    assert docs.status_code == 200
    for path in ("/", "/v1/recognitions"):
        operation = spec["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == ["inputFile"]
        assert {"200", "400", "413", "415", "422", "502", "503", "504"} <= set(operation["responses"])
    assert spec["paths"]["/"]["post"]["responses"]["200"]["content"]["text/plain"]["example"] == "test_00:Paul"


async def test_cors_is_off_by_default() -> None:
    async with running_web() as web:
        reply = await web.client.options(
            "/", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert "access-control-allow-origin" not in reply.headers


async def test_shutdown_waits_for_in_flight_requests_then_closes() -> None:
    gate = asyncio.Event()
    settings = web_settings(shutdown_grace_s=5)
    app = create_app(settings, memory_data_tier, companions=[lambda app, data: _GatedWorker(data, gate)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        request = asyncio.create_task(client.post("/", **upload(PHOTO, "late.jpg")))
        async with asyncio.timeout(5):
            while app.state.pending.in_flight == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        shutdown = asyncio.create_task(lifespan.__aexit__(None, None, None))
        async with asyncio.timeout(5):
            while app.state.gateway.accepting:  # noqa: ASYNC110 - a condition, polled
                await asyncio.sleep(0.01)
        refused = await client.post("/", **upload(PHOTO))
        assert not shutdown.done()  # still draining
        gate.set()
        reply = await request
        await shutdown
    assert refused.status_code == 503 and "shutting down" in refused.text
    assert reply.status_code == 200 and reply.text.startswith("late:")
    assert not app.state.poller.running


class _GatedWorker:
    """A fake worker that starts answering only once `gate` is set."""

    def __init__(self, data: DataTier, gate: asyncio.Event) -> None:
        self._worker = InstantWorker(data)
        self._gate = gate
        self._opening: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _GatedWorker:
        self._opening = asyncio.create_task(self._open_when_allowed())
        return self

    async def _open_when_allowed(self) -> None:
        await self._gate.wait()
        await self._worker.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._opening is not None:
            self._opening.cancel()
        await self._worker.__aexit__(*exc_info)


@pytest.mark.slow
def test_serving_requests_never_imports_torch(tmp_path: Path) -> None:
    import numpy as np

    from facerec.recognition.gallery import Gallery, GalleryMeta

    # With a gallery file too: the web tier lists its people without loading it with torch.
    gallery = tmp_path / "gallery.pt"
    Gallery(["Bob"], np.eye(1, 512, dtype=np.float32), GalleryMeta(weights="w", crop_size=160, margin=14)).save(gallery)
    script = textwrap.dedent(
        """
        import asyncio, io, sys
        import httpx
        from PIL import Image
        from facerec.testing import instant_worker_companion, memory_data_tier
        from facerec.settings import Settings
        from facerec.web.app import create_app

        async def main():
            app = create_app(Settings(gallery=GALLERY), memory_data_tier, companions=[instant_worker_companion()])
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32)).save(buffer, format="PNG")
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                    reply = await client.post("/", files={"inputFile": ("x.png", buffer.getvalue())})
                    assert reply.status_code == 200, reply.text
                    await client.get("/metrics")
                    await client.get("/openapi.json")
                    await client.get("/", headers={"Accept": "text/html"})
                    files = [("photos", ("p.png", buffer.getvalue()))]
                    assert (await client.post("/v1/people/Ada/photos", files=files)).status_code == 200
                    listed = (await client.get("/v1/people")).json()["people"]
                    assert [p["name"] for p in listed if p["read_only"]] == ["Bob"], listed
                    assert (await client.delete("/v1/people/Ada")).status_code in (204, 404)
            # numpy too: the web image (Dockerfile.web) does not install it.
            heavy = ("torch", "torchvision", "facenet_pytorch", "numpy")
            print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))

        asyncio.run(main())
        """
    ).replace("GALLERY", repr(str(gallery)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
