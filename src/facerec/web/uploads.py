"""Reading the uploaded image: a body-size guard that never buffers an oversized body, the multipart field,
and content sniffing by magic bytes (the client's filename and Content-Type are not trusted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.web.admission import Reservation, declared_length, reservation
from facerec.web.errors import ServiceError, error_response
from facerec.web.forms import request_form

UPLOAD_FIELD = "inputFile"
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image MIME type from the first bytes, or None when it is none of JPEG/PNG/WebP/BMP/GIF/TIFF."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def multipart_body(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` of a multipart form with one required field (routes read the form themselves)."""
    form = {"type": "object", "required": [field], "properties": {field: schema}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


@dataclass(slots=True)
class Upload:
    filename: str
    data: bytes
    content_type: str
    reservation: Reservation | None = None
    """The request's hold on the web tier's byte budget (`facerec.web.admission`)."""

    def release(self) -> None:
        """Drop the bytes once they are stored: the web tier keeps no copy of an upload while it waits for the
        answer, and gives the bytes back to the admission budget."""
        size = len(self.data)
        self.data = b""
        if self.reservation is not None:
            self.reservation.release(size)


def too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, "image_too_large", f"upload larger than the limit of {limit} bytes (setting FACEREC_MAX_UPLOAD_BYTES)"
    )


class BodySizeLimit:
    """ASGI middleware: refuse a POST body over `max_body_bytes` from its Content-Length before reading it,
    and count bytes while streaming so a chunked or lying client is cut off at the limit too."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, file_limit: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.file_limit = file_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            error = too_large(self.file_limit)
            response = error_response(scope["path"], error.status, error.code, error.message, {"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large(self.file_limit)
            return message

        await self.app(scope, counting_receive, send)


@dataclass(frozen=True, slots=True)
class RejectedFile:
    filename: str
    reason: str


async def read_photos(
    request: Request, max_bytes: int, field: str, max_files: int
) -> tuple[list[Upload], list[RejectedFile]]:
    """Every image in the repeated multipart field `field`; files that are empty, too large or not images are
    rejected one by one (with the reason) rather than failing the others. Raises 422 when there is none."""
    uploads: list[Upload] = []
    rejected: list[RejectedFile] = []
    try:
        async with request_form(request, max_files=max_files, max_fields=max_files + 8) as form:
            parts = [part for part in form.getlist(field) if isinstance(part, UploadFile)]
            if not parts:
                others = ", ".join(sorted(str(k) for k in form)) or "none"
                raise ServiceError(
                    422, "missing_field", f"expected image files in multipart form field '{field}' (received: {others})"
                )
            for part in parts:
                filename = part.filename or ""
                try:
                    uploads.append(
                        checked_image(
                            filename, await part.read(max_bytes + 1), max_bytes, field, reservation(request.scope)
                        )
                    )
                except ServiceError as exc:
                    rejected.append(RejectedFile(filename, exc.message))
    except StarletteHTTPException as exc:  # malformed multipart, or more files than allowed
        raise ServiceError(400, "bad_multipart", f"could not parse the multipart body: {exc.detail}") from None
    return uploads, rejected


async def read_upload(request: Request, max_bytes: int, field: str = UPLOAD_FIELD) -> Upload:
    """The image in multipart field `field`; raises ServiceError 400/413/415/422."""
    try:
        async with request_form(request, max_files=8, max_fields=32) as form:
            part = form.get(field)
            if not isinstance(part, UploadFile):
                others = ", ".join(sorted(str(k) for k in form)) or "none"
                raise ServiceError(
                    422,
                    "missing_field",
                    f"expected an image file in multipart form field '{field}' (received fields: {others})",
                )
            data = await part.read(max_bytes + 1)
            filename = part.filename or ""
    except StarletteHTTPException as exc:  # malformed multipart
        raise ServiceError(400, "bad_multipart", f"could not parse the multipart body: {exc.detail}") from None
    return checked_image(filename, data, max_bytes, field, reservation(request.scope))


def checked_image(filename: str, data: bytes, max_bytes: int, field: str, held: Reservation | None = None) -> Upload:
    """An upload whose bytes are a supported image within the limit (read up to `max_bytes + 1` to tell);
    raises ServiceError 413/400/415 otherwise."""
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise ServiceError(400, "empty_file", f"the file in '{field}' is empty")
    content_type = sniff_image_type(data)
    if content_type is None:
        raise ServiceError(
            415, "not_an_image", "the upload is not a JPEG, PNG, WebP, BMP, GIF or TIFF image (by its content)"
        )
    return Upload(filename=filename, data=data, content_type=content_type, reservation=held)


VERIFY_FIELDS = ("image1", "image2")
PERSON_FIELD = "person"


@dataclass(frozen=True, slots=True)
class VerificationForm:
    image1: Upload
    image2: Upload | None
    person: str | None
    """An enrolled person's name as given (trimmed); exactly one of `image2` and `person` is set."""


async def read_verification(request: Request, max_bytes: int) -> VerificationForm:
    """`image1` and either `image2` or `person` from a multipart form; raises ServiceError 400/413/415/422."""
    try:
        async with request_form(request, max_files=4, max_fields=16) as form:
            parts = {field: form.get(field) for field in VERIFY_FIELDS}
            named = form.get(PERSON_FIELD)
            person = named.strip() if isinstance(named, str) and named.strip() else None
            first = parts["image1"]
            if not isinstance(first, UploadFile):
                others = ", ".join(sorted(str(k) for k in form)) or "none"
                raise ServiceError(
                    422,
                    "missing_field",
                    f"expected an image file in multipart form field 'image1' (received fields: {others})",
                )
            second = parts["image2"]
            if isinstance(second, UploadFile) and person is not None:
                raise ServiceError(
                    422, "bad_form", "give either a second photo in 'image2' or a person in 'person', not both"
                )
            if not isinstance(second, UploadFile) and person is None:
                raise ServiceError(
                    422, "bad_form", "give a second photo in 'image2' or an enrolled person's name in 'person'"
                )
            held = reservation(request.scope)
            image1 = checked_image(first.filename or "", await first.read(max_bytes + 1), max_bytes, "image1", held)
            image2 = (
                checked_image(second.filename or "", await second.read(max_bytes + 1), max_bytes, "image2", held)
                if isinstance(second, UploadFile)
                else None
            )
    except StarletteHTTPException as exc:  # malformed multipart
        raise ServiceError(400, "bad_multipart", f"could not parse the multipart body: {exc.detail}") from None
    return VerificationForm(image1, image2, person)
