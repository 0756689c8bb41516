"""Gallery management: list, enroll and forget people. The gallery lives in the data tier's gallery store, so
every worker (local or on EC2) sees a change within `gallery_refresh_s`; photos are embedded by the app tier,
never here (the web process does not import torch).

People from the `--gallery` file are listed too, read-only: they live in a file the workers load at start-up,
which the API cannot change (`facerec enroll` makes it)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Final, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from facerec import people, validation
from facerec.gallery_file import GalleryFileError, gallery_people
from facerec.logs import error_text
from facerec.ports import BlobStore, PortError
from facerec.web.auth import authorize
from facerec.web.errors import ErrorBody, ServiceError
from facerec.web.gateway import RecognitionGateway
from facerec.web.uploads import multipart_body, read_photos

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/people", tags=["people"])

PHOTO_FIELD = "photos"
MAX_PHOTOS = 10


ENROLLED: Final = "enrolled"
GALLERY_FILE: Final = "gallery-file"


class Person(BaseModel):
    name: str
    photos: int | None = Field(
        description="Enrolled photos (each with exactly one face); null for a gallery-file person (the file keeps "
        "embeddings, not photos)."
    )
    embeddings: int = Field(description="Reference embeddings the workers compare faces with.")
    source: Literal["enrolled", "gallery-file"] = Field(
        description="`enrolled`: through this API or `facerec enroll --store`; `gallery-file`: from the file given "
        "with `--gallery`."
    )
    read_only: bool = Field(description="True for gallery-file people: the API cannot change or delete them.")


class PeopleOut(BaseModel):
    people: list[Person]


class RejectedPhoto(BaseModel):
    filename: str
    reason: str


class EnrollmentOut(BaseModel):
    person: str
    used: list[str] = Field(description="Filenames of the photos enrolled.")
    rejected: list[RejectedPhoto] = Field(description="Photos not used, and why.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "person": "Ada Lovelace",
                    "used": ["ada1.jpg", "ada2.jpg"],
                    "rejected": [{"filename": "group.jpg", "reason": "3 faces found; enroll needs exactly one"}],
                }
            ]
        }
    }


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed multipart body, more than 10 photos, or more than one Authorization header.",
        401: "A `manage` API key is needed (one exists) or the key sent is not valid.",
        403: "A key without the needed role; no `manage` key exists on a non-loopback server; or a foreign "
        "Origin / Host (the browser guard).",
        429: "Too many failed API key attempts from this address (Retry-After).",
        404: "No such person.",
        409: "The person comes from the gallery file, which the API cannot change.",
        413: "The request body is larger than the upload limit.",
        422: "Invalid name, or no file in multipart field `photos`.",
        501: "This deployment has no gallery store.",
        503: "The gallery store or the request queue is unavailable, or the service is overloaded.",
    }
    statuses = tuple(sorted({*statuses, 400, 401, 403, 429}))
    return {status: {"description": descriptions[status], "model": ErrorBody} for status in statuses}


def load_gallery_file_people(gallery: str | None) -> dict[str, int]:
    """Person -> entries in the `--gallery` file (read once: workers load the file at start-up only)."""
    if not gallery:
        return {}
    try:
        return gallery_people(Path(gallery))
    except GalleryFileError as exc:
        # The workers refuse such a file with their own error; the web tier still serves the enrolled people.
        log.warning("gallery_file_unreadable", extra={"path": gallery, "error": error_text(exc)})
        return {}


def _file_people(request: Request) -> dict[str, int]:
    people: dict[str, int] = getattr(request.app.state, "gallery_file_people", {})
    return people


def _store(request: Request) -> BlobStore:
    store: BlobStore | None = request.app.state.data.gallery  # Starlette's State holds untyped attributes
    if store is None:
        raise ServiceError(501, "not_supported", "this deployment has no gallery store")
    return store


def _name(name: str) -> str:
    """The canonical name, or a 422 whose message says which characters are allowed (nothing is stored)."""
    try:
        return validation.person_name(name)
    except validation.InvalidPersonName as exc:
        raise ServiceError(422, "invalid_name", f"invalid person name: {exc}") from None


def _unavailable(exc: PortError) -> ServiceError:
    # The backend's words (paths, ARNs, account ids) go to the log with the request id, not to the client.
    return ServiceError(
        503,
        "unavailable",
        "the gallery store is unavailable; retry shortly",
        {"Retry-After": "1"},
        detail=f"gallery store: {str(exc)[:300]}",
    )


@router.get("", response_model=PeopleOut, summary="List enrolled people", responses=_errors(501, 503))
async def list_people(request: Request) -> PeopleOut:
    await authorize(request, "recognize")
    try:
        enrolled = await people.enrolled_people(_store(request))
    except PortError as exc:
        raise _unavailable(exc) from None
    listed = [
        Person(name=name, photos=count, embeddings=count, source=ENROLLED, read_only=False)
        for name, count in enrolled.items()
    ]
    listed += [
        Person(name=name, photos=None, embeddings=count, source=GALLERY_FILE, read_only=True)
        for name, count in _file_people(request).items()
    ]
    # A name both in the file and enrolled appears twice, once per source: only the enrolled photos can go.
    listed.sort(key=lambda person: (person.name, person.source))
    return PeopleOut(people=listed)


@router.post(
    "/{name}/photos",
    response_model=EnrollmentOut,
    summary="Enroll photos of a person",
    description=(
        "Multipart field `photos`, repeated (up to 10 files, together within the upload limit). Each photo must "
        "show exactly one face; the answer lists the photos used and those rejected with the reason. Workers "
        "recognize the person within a few seconds. A rejected photo (including one not answered in time) is "
        "not kept in the gallery store. "
        f"Names: {validation.ALLOWED_NAME_CHARS}; surrounding spaces are trimmed."
    ),
    responses=_errors(400, 413, 422, 501, 503),
    openapi_extra=multipart_body(PHOTO_FIELD, {"type": "array", "items": {"type": "string", "format": "binary"}}),
)
async def enroll_photos(name: str, request: Request) -> EnrollmentOut:
    await authorize(request, "manage")
    person = _name(name)
    store = _store(request)
    gateway: RecognitionGateway = request.app.state.gateway
    gateway.admit()
    uploads, refused = await read_photos(
        request, request.app.state.settings.max_upload_bytes, PHOTO_FIELD, max_files=MAX_PHOTOS
    )
    try:
        # Read before any photo is stored: a delete after this point supersedes these enrollments.
        generation = await people.current_generation(store, person) if uploads else None
    except PortError as exc:
        raise _unavailable(exc) from None
    outcomes = await asyncio.gather(
        *(gateway.enroll_photo(person, upload, generation) for upload in uploads), return_exceptions=True
    )
    used: list[str] = []
    rejected = [RejectedPhoto(filename=r.filename, reason=r.reason) for r in refused]
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, ServiceError) and outcome.status in (501, 503):
            raise outcome
        if isinstance(outcome, BaseException):
            reason = outcome.message if isinstance(outcome, ServiceError) else "processing failed"
            rejected.append(RejectedPhoto(filename=upload.filename, reason=reason))
        elif outcome.error is not None:
            rejected.append(RejectedPhoto(filename=upload.filename, reason=outcome.error.message))
        else:
            used.append(upload.filename)
    return EnrollmentOut(person=person, used=used, rejected=rejected)


@router.delete(
    "/{name}",
    status_code=204,
    response_class=Response,
    summary="Forget a person (photos and embeddings)",
    description=(
        "Deletes the person's photos and embeddings. Photos of them still being enrolled when this returns are "
        "rejected (`the person was deleted while the photo was being enrolled`) and not kept."
    ),
    responses=_errors(404, 409, 422, 501, 503),
)
async def delete_person(name: str, request: Request) -> Response:
    await authorize(request, "manage")
    person = _name(name)
    try:
        deleted = await people.forget_person(_store(request), person)
    except PortError as exc:
        raise _unavailable(exc) from None
    if not deleted and person in _file_people(request):
        raise ServiceError(
            409,
            "read_only",
            f"{person!r} comes from the gallery file {request.app.state.settings.gallery} and cannot be deleted "
            "through the API; rebuild the file with `facerec enroll` without them",
        )
    if not deleted:
        raise ServiceError(404, "not_found", f"no person named {person!r} is enrolled")
    return Response(status_code=204)
