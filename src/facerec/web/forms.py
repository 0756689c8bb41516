"""Multipart form parsing that leaves nothing open when the body is truncated.

Starlette's parser closes its spooled part files when parsing fails, but a body that simply ends inside a
part (no closing boundary: a client that died, or a hostile one) parses "successfully" without that part,
and its spooled file is left for the garbage collector. Here such a body is a 400 and the file is closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request


class _ClosingMultiPartParser(MultiPartParser):
    async def parse(self) -> FormData:
        form = await super().parse()
        kept = {id(value.file) for _, value in form.multi_items() if isinstance(value, UploadFile)}
        # Starlette's own list of the part files it opened (closed by it only when parsing raises).
        unfinished = [f for f in getattr(self, "_files_to_close_on_error", []) if id(f) not in kept]
        if unfinished:
            for file in unfinished:
                file.close()
            await form.close()
            raise MultiPartException("the body ended inside a part (truncated upload)")
        return form


@asynccontextmanager
async def request_form(request: Request, *, max_files: int, max_fields: int) -> AsyncIterator[FormData]:
    """`request.form()` as a context manager (every part file closed on exit), truncation a 400."""
    content_type, _ = parse_options_header(request.headers.get("Content-Type"))
    if content_type != b"multipart/form-data":
        async with request.form(max_files=max_files, max_fields=max_fields) as form:
            yield form
        return
    try:
        async with aclosing(request.stream()) as stream:
            form = await _ClosingMultiPartParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            ).parse()
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    try:
        yield form
    finally:
        await form.close()
