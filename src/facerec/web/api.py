"""The HTTP routes: the course's `POST /`, the JSON `/v1/recognitions`, and the health/metrics endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from facerec.messages import Box
from facerec.ports import DataTier
from facerec.web.access_log import request_id
from facerec.web.errors import ErrorBody
from facerec.web.gateway import Answer, RecognitionGateway
from facerec.web.uploads import UPLOAD_FIELD, multipart_body, read_upload

router = APIRouter()

CHECK_TIMEOUT_S = 2.0

_UPLOAD_BODY = multipart_body(
    UPLOAD_FIELD,
    {
        "type": "string",
        "format": "binary",
        "description": "The photo: JPEG, PNG, WebP, BMP, GIF or TIFF (sniffed from its bytes).",
    },
)

_ERRORS: dict[int, str] = {
    400: "Empty file or malformed multipart body.",
    413: "Upload over `max_upload_bytes`, or an image with too many pixels.",
    415: "Not an image (checked by content, not by name), or an image that cannot be decoded.",
    422: "No file in multipart field `inputFile`.",
    502: "The worker failed to process the image (also after repeated attempts: dead-lettered).",
    503: "Overloaded (Retry-After), shutting down, or the image store / request queue is unavailable.",
    504: "No answer before `request_deadline_s`.",
}


def _documented_errors(media_type: str, example: Any) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {}
    for status, description in _ERRORS.items():
        entry: dict[str, Any] = {"description": description, "content": {media_type: {"example": example}}}
        if media_type == "application/json":
            entry["model"] = ErrorBody
        documented[status] = entry
    return documented


class Timings(BaseModel):
    queue_wait_s: float | None = Field(None, description="Time the request waited in the queue (worker's view).")
    inference_s: float | None = Field(None, description="The worker's detection + embedding time for the batch.")
    total_s: float = Field(description="Upload received to answer, as measured by the web tier.")


class RecognitionOut(BaseModel):
    request_id: str
    filename_stem: str = Field(description="The client's filename without path or extension (display form).")
    name: str = Field(description="Nearest gallery identity, `Unknown`, or `NoFace`.")
    distance: float | None = None
    box: Box | None = Field(None, description="Face box in the original image's pixels.")
    probability: float | None = Field(None, description="Face detection probability.")
    unknown: bool = False
    no_face: bool = False
    worker: str | None = None
    timings: Timings

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "request_id": "3f2c8e1a9b7d4c6e8f0a1b2c3d4e5f60",
                    "filename_stem": "test_00",
                    "name": "Paul",
                    "distance": 0.61,
                    "box": {"x1": 19.0, "y1": 14.0, "x2": 44.0, "y2": 45.0},
                    "probability": 0.999,
                    "unknown": False,
                    "no_face": False,
                    "worker": "app-tier-instance-1",
                    "timings": {"queue_wait_s": 0.02, "inference_s": 0.09, "total_s": 0.13},
                }
            ]
        }
    }


def _gateway(request: Request) -> RecognitionGateway:
    gateway: RecognitionGateway = request.app.state.gateway  # Starlette's State holds untyped attributes
    return gateway


async def _recognize(request: Request) -> Answer:
    gateway = _gateway(request)
    gateway.admit()  # refuse before reading an upload we would not process
    upload = await read_upload(request, request.app.state.settings.max_upload_bytes)
    return await gateway.recognize(upload, receive=request.receive, request_id=request_id(request.scope))


@router.post(
    "/",
    response_class=PlainTextResponse,
    summary="Recognize a face (course format)",
    description=(
        "Answers `<filename stem>:<name>` as plain text, e.g. `test_00:Paul`. A photo without a face answers "
        "`<stem>:NoFace` and one too far from every gallery identity `<stem>:Unknown`, both with 200. Errors "
        "are plain text too."
    ),
    responses={
        200: {"content": {"text/plain": {"example": "test_00:Paul"}}},
        **_documented_errors("text/plain", "expected an image file in multipart form field 'inputFile'"),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def recognize_plain(request: Request) -> PlainTextResponse:
    answer = await _recognize(request)
    assert answer.response.result is not None  # the gateway raised otherwise
    return PlainTextResponse(f"{answer.stem}:{answer.response.result.name}")


@router.post(
    "/v1/recognitions",
    response_model=RecognitionOut,
    summary="Recognize a face (JSON)",
    description="The same upload as `POST /`; answers the identity with distance, face box and timings.",
    responses=_documented_errors(
        "application/json", {"error": {"code": "not_an_image", "message": "the upload is not ... image"}}
    ),
    openapi_extra=_UPLOAD_BODY,
)
async def recognize_json(request: Request) -> RecognitionOut:
    answer = await _recognize(request)
    result = answer.response.result
    assert result is not None
    timings = answer.response.timings
    return RecognitionOut(
        request_id=answer.request_id,
        filename_stem=answer.stem,
        name=result.name,
        distance=result.distance,
        box=result.box,
        probability=result.probability,
        unknown=result.unknown,
        no_face=result.no_face,
        worker=answer.response.worker,
        timings=Timings(
            queue_wait_s=timings.queue_wait_s if timings else None,
            inference_s=timings.inference_s if timings else None,
            total_s=round(answer.total_s, 6),
        ),
    )


@router.get("/healthz", summary="Liveness: the process serves HTTP", responses={200: {"description": "alive"}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: image store and queues reachable, response poller running",
    responses={503: {"description": "Some dependency failed its check; the body says which."}},
)
async def readyz(request: Request) -> JSONResponse:
    data: DataTier = request.app.state.data
    checks = {
        "inputs": data.inputs.check(),
        "requests": data.requests.check(),
        "responses": data.responses.check(),
        "dead_letters": data.dead_letters.check(),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(check, CHECK_TIMEOUT_S) for check in checks.values()), return_exceptions=True
    )
    status = {name: _check_status(result) for name, result in zip(checks, results, strict=True)}
    status["response_poller"] = "ok" if request.app.state.poller.running else "stopped"
    ready = all(value == "ok" for value in status.values()) and _gateway(request).accepting
    return JSONResponse({"ready": ready, "checks": status}, status_code=200 if ready else 503)


def _check_status(result: object) -> str:
    if isinstance(result, BaseException):
        return f"unavailable: {str(result)[:120] or type(result).__name__}"
    return "ok"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body = await request.app.state.metrics.render(request.app.state.data.requests)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
