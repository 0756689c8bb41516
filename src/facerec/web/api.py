"""The HTTP routes: the course's `POST /`, the JSON `/v1/recognitions`, and the health/metrics endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from facerec.messages import MAX_TOP_K, Box, Candidate, FaceRecord, VerifiedFace
from facerec.people import InvalidPersonName, normalise_name
from facerec.ports import DataTier
from facerec.scaler.leadership import SCALER_LEASE
from facerec.web.access_log import request_id
from facerec.web.auth import authorize
from facerec.web.deployment import Deployment
from facerec.web.errors import ErrorBody, ServiceError
from facerec.web.gateway import Answer, RecognitionGateway
from facerec.web.uploads import PERSON_FIELD, UPLOAD_FIELD, multipart_body, read_upload, read_verification

if TYPE_CHECKING:
    from facerec.scaler.leadership import Leadership

log = logging.getLogger(__name__)

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
    400: "Empty file, malformed multipart body, or more than one Authorization header.",
    401: "An API key is required (`FACEREC_REQUIRE_KEY=recognize`) or the one sent is not valid.",
    403: "A key without the needed role, or a foreign Origin / Host (the browser guard).",
    429: "Too many failed API key attempts from this address (Retry-After).",
    413: "Upload over `max_upload_bytes`, or an image with too many pixels.",
    415: "Not an image (checked by content, not by name), or an image that cannot be decoded.",
    422: "No file in multipart field `inputFile`.",
    502: "The worker failed to process the image (also after repeated attempts: dead-lettered).",
    503: "Overloaded by requests or upload bytes (Retry-After), shutting down, or the image store / request queue "
    "is unavailable (the body names the request id under which the details are logged).",
    504: "No answer before `request_deadline_s`.",
}


_RECOGNITION_JSON_ERRORS = {
    **_ERRORS,
    422: f"No file in multipart field `inputFile`, or `top_k` not an integer from 1 to {MAX_TOP_K}.",
}

_VERIFICATION_ERRORS: dict[int, str] = {
    **_ERRORS,
    404: "`person` is not enrolled (code `unknown_person`).",
    422: "No face in one of the photos (code `no_face`; the message names `image1` or `image2`); no file in "
    "`image1`; both or neither of `image2` and `person` (code `bad_form`); an unusable person name.",
}


def _documented_errors(
    media_type: str, example: Any, errors: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {}
    for status, description in sorted((errors or _ERRORS).items()):
        entry: dict[str, Any] = {"description": description, "content": {media_type: {"example": example}}}
        if media_type == "application/json":
            entry["model"] = ErrorBody
        documented[status] = entry
    return documented


class Timings(BaseModel):
    queue_wait_s: float | None = Field(None, description="Time the request waited in the queue (worker's view).")
    inference_s: float | None = Field(None, description="The worker's detection + embedding time for the batch.")
    total_s: float = Field(description="Upload received to answer, as measured by the web tier.")
    cold_start: bool | None = Field(
        None,
        description="True when no worker was running as the request arrived, so `total_s` includes starting one "
        "(the model loading); null where this web process does not run the workers' fleet.",
    )


class WorkersOut(BaseModel):
    running: int = Field(description="Workers ready to recognize.")
    starting: int = Field(description="Workers starting (loading the model).")
    stopping: int = Field(description="Workers finishing their last batch before they exit.")


WorkerStates = Callable[[], Awaitable[WorkersOut]]


class RecognitionOut(BaseModel):
    request_id: str
    filename_stem: str = Field(description="The client's filename without path or extension (display form).")
    name: str = Field(
        description="The subject face's nearest person; `Unknown` when even the nearest is beyond the recognition "
        "threshold (or nobody is enrolled); `NoFace` when the photo has no face."
    )
    distance: float | None = Field(None, description="L2 distance from the subject face to the nearest person.")
    box: Box | None = Field(None, description="The subject face's box in the original image's pixels.")
    probability: float | None = Field(None, description="Face detection probability.")
    unknown: bool = False
    no_face: bool = False
    candidates: list[Candidate] = Field(
        default_factory=list,
        description="The subject face's `top_k` nearest people, nearest first, one entry per person (fewer when "
        "fewer are enrolled; listed for an `Unknown` face too).",
    )
    faces: list[FaceRecord] = Field(
        default_factory=list,
        description="Every face in the photo (at most 10), largest first, the subject among them; each with its own "
        "name, distance, `unknown` and candidates. Empty when there is no face.",
    )
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
                    "candidates": [{"name": "Paul", "distance": 0.61}, {"name": "Ana", "distance": 1.18}],
                    "faces": [
                        {
                            "box": {"x1": 19.0, "y1": 14.0, "x2": 44.0, "y2": 45.0},
                            "probability": 0.999,
                            "name": "Paul",
                            "distance": 0.61,
                            "unknown": False,
                            "candidates": [{"name": "Paul", "distance": 0.61}, {"name": "Ana", "distance": 1.18}],
                        },
                        {
                            "box": {"x1": 120.0, "y1": 30.0, "x2": 138.0, "y2": 52.0},
                            "probability": 0.98,
                            "name": "Unknown",
                            "distance": 1.24,
                            "unknown": True,
                            "candidates": [{"name": "Ana", "distance": 1.24}, {"name": "Paul", "distance": 1.31}],
                        },
                    ],
                    "worker": "app-tier-instance-1",
                    "timings": {"queue_wait_s": 0.02, "inference_s": 0.09, "total_s": 0.13},
                }
            ]
        }
    }


class VerificationOut(BaseModel):
    request_id: str
    same: bool = Field(description="`true`: the same person (distance within the threshold).")
    distance: float = Field(
        description="L2 distance between the two subject faces, or between the face and the person's mean embedding."
    )
    threshold: float = Field(
        description="The distance beyond which the answer is different people: the calibrated face-to-face "
        "threshold for two photos; the recognition (`Unknown`) threshold for a photo against an enrolled person."
    )
    person: str | None = Field(None, description="The enrolled person compared with, when one was given.")
    faces: list[VerifiedFace] = Field(description="The subject face of each photo.")
    worker: str | None = None
    timings: Timings

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "request_id": "9a1c3e5f7b9d4f6a8c0e2a4c6e8a0c2e",
                    "same": True,
                    "distance": 0.72,
                    "threshold": 1.1,
                    "person": None,
                    "faces": [
                        {
                            "image": "image1",
                            "box": {"x1": 19.0, "y1": 14.0, "x2": 44.0, "y2": 45.0},
                            "probability": 1.0,
                        },
                        {
                            "image": "image2",
                            "box": {"x1": 80.0, "y1": 60.0, "x2": 170.0, "y2": 180.0},
                            "probability": 1.0,
                        },
                    ],
                    "worker": "app-tier-instance-1",
                    "timings": {"queue_wait_s": 0.02, "inference_s": 0.15, "total_s": 0.2},
                }
            ]
        }
    }


_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
_VERIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image1"],
                    "properties": {
                        "image1": {**_IMAGE_SCHEMA, "description": "The first photo (its subject face is compared)."},
                        "image2": {**_IMAGE_SCHEMA, "description": "The second photo; or give `person` instead."},
                        PERSON_FIELD: {"type": "string", "description": "An enrolled person; or give `image2`."},
                    },
                }
            }
        },
    }
}


def _gateway(request: Request) -> RecognitionGateway:
    gateway: RecognitionGateway = request.app.state.gateway  # Starlette's State holds untyped attributes
    return gateway


async def _workers(request: Request) -> WorkersOut | None:
    """The fleet's workers by state, where this process runs the fleet (None otherwise or when unreadable)."""
    states: WorkerStates | None = getattr(request.app.state, "worker_states", None)
    if states is None:
        return None
    try:
        return await asyncio.wait_for(states(), 2.0)
    except Exception:  # a status line must never fail a recognition
        return None


@router.get(
    "/v1/workers",
    response_model=WorkersOut,
    summary="Workers by state (the page says 'starting the model…' while none is running)",
    responses={404: {"description": "This web process does not run the workers' fleet (or cannot read it now)."}},
)
async def workers(request: Request) -> WorkersOut:
    found = await _workers(request)
    if found is None:
        raise ServiceError(404, "no_fleet", "the workers' state is not known to this web process")
    return found


async def _recognize(request: Request, top_k: int | None = None, all_faces: bool = False) -> Answer:
    await authorize(request, "recognize")
    gateway = _gateway(request)
    gateway.admit()  # refuse before reading an upload we would not process
    upload = await read_upload(request, request.app.state.settings.max_upload_bytes)
    return await gateway.recognize(
        upload, receive=request.receive, request_id=request_id(request.scope), top_k=top_k, all_faces=all_faces
    )


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
    description=(
        "The same upload as `POST /`; answers the subject face's identity (the face `POST /` names) with "
        "distance, face box and timings, its `top_k` nearest people as `candidates`, and every face in the "
        "photo (at most 10, largest first) in `faces`."
    ),
    responses=_documented_errors(
        "application/json",
        {"error": {"code": "not_an_image", "message": "the upload is not ... image"}},
        _RECOGNITION_JSON_ERRORS,
    ),
    openapi_extra=_UPLOAD_BODY,
)
async def recognize_json(
    request: Request,
    top_k: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_TOP_K,
            description=f"How many nearest people to list per face, nearest first (1 to {MAX_TOP_K}).",
        ),
    ] = 1,
) -> RecognitionOut:
    before = await _workers(request)
    answer = await _recognize(request, top_k=top_k, all_faces=True)
    result = answer.response.result
    assert result is not None
    return RecognitionOut(
        request_id=answer.request_id,
        filename_stem=answer.stem,
        name=result.name,
        distance=result.distance,
        box=result.box,
        probability=result.probability,
        unknown=result.unknown,
        no_face=result.no_face,
        candidates=result.candidates or [],
        faces=result.faces or [],
        worker=answer.response.worker,
        timings=_timings(answer, None if before is None else before.running == 0),
    )


@router.post(
    "/v1/verifications",
    response_model=VerificationOut,
    summary="Verify: the same person? (1:1)",
    description=(
        "Multipart form with two photos (`image1`, `image2`), or one photo (`image1`) and an enrolled `person`. "
        "Compares the subject face of each photo (the face `POST /` would name): `same` is whether their "
        "distance is within `threshold`. Both photos together must fit the upload limit."
    ),
    responses=_documented_errors(
        "application/json",
        {"error": {"code": "no_face", "message": "no face found in image2"}},
        _VERIFICATION_ERRORS,
    ),
    openapi_extra=_VERIFY_BODY,
)
async def verify(request: Request) -> VerificationOut:
    await authorize(request, "recognize")
    gateway = _gateway(request)
    gateway.admit()  # refuse before reading uploads we would not process
    form = await read_verification(request, request.app.state.settings.max_upload_bytes)
    person = None
    if form.person is not None:
        try:
            person = normalise_name(form.person)
        except InvalidPersonName as exc:
            raise ServiceError(422, "invalid_person", f"unusable person name: {exc}") from None
    answer = await gateway.verify(
        form.image1, form.image2, person, receive=request.receive, request_id=request_id(request.scope)
    )
    verification = answer.response.verification
    assert verification is not None  # the gateway raised otherwise
    return VerificationOut(
        request_id=answer.request_id,
        same=verification.same,
        distance=verification.distance,
        threshold=verification.threshold,
        person=person,
        faces=verification.faces,
        worker=answer.response.worker,
        timings=_timings(answer),
    )


def _timings(answer: Answer, cold_start: bool | None = None) -> Timings:
    timings = answer.response.timings
    return Timings(
        queue_wait_s=timings.queue_wait_s if timings else None,
        inference_s=timings.inference_s if timings else None,
        total_s=round(answer.total_s, 6),
        cold_start=cold_start,
    )


@router.get("/healthz", summary="Liveness: the process serves HTTP", responses={200: {"description": "alive"}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: image store and queues reachable, response poller running",
    description="Also says where this process's answers arrive (`reply_channel`: the fixed response queue, or its "
    "own `<prefix>-resp-<web id>`) and, in a deployment of several web processes, its `web_id`, how many `members` "
    "are live and who holds the `scaler_lease` (null for a lone process, which runs its scaler without one).",
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
    for name, result in zip(checks, results, strict=True):
        if isinstance(result, BaseException):  # the details stay in the log: the probe is unauthenticated
            log.warning(
                "readiness_check_failed",
                extra={"check": name, "error": str(result)[:300] or type(result).__name__},
            )
    status["response_poller"] = "ok" if request.app.state.poller.running else "stopped"
    deployment: Deployment | None = request.app.state.deployment
    if deployment is not None and deployment.reply_lease_lost:
        status["reply_channel"] = "lost: another web process reads the fixed response queue"
    ready = all(value == "ok" for value in status.values()) and _gateway(request).accepting
    body = {"ready": ready, "checks": status, **await _deployment_status(request, deployment)}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _deployment_status(request: Request, deployment: Deployment | None) -> dict[str, object]:
    """Where this process's answers arrive and who runs the scaler: `scaler_lease` is null for a lone web process
    (it runs its scaler without a lease)."""
    if deployment is None or deployment.channel is None:
        data: DataTier = request.app.state.data
        return {"reply_channel": {"queue": data.responses.name, "own": False}, "scaler_lease": None}
    leadership: Leadership | None = request.app.state.leadership
    holder: str | None = None
    if leadership is not None and leadership.leading:
        holder = deployment.web_id
    else:
        with contextlib.suppress(Exception):  # status only: an unreadable lease reports no holder
            lease = await asyncio.wait_for(deployment.coordination.lease(SCALER_LEASE), CHECK_TIMEOUT_S)
            if lease is not None and lease.live_at(time.time()):
                holder = lease.holder
    return {
        "web_id": deployment.web_id,
        "members": len(deployment.live_members),
        "reply_channel": {"queue": deployment.channel.queue.name, "own": deployment.channel.own},
        "scaler_lease": {"held": holder == deployment.web_id, "holder": holder},
    }


def _check_status(result: object) -> str:
    if isinstance(result, TimeoutError):
        return "unavailable: no answer in time"
    if isinstance(result, BaseException):
        return "unavailable"
    return "ok"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body = await request.app.state.metrics.render(request.app.state.data.requests)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
