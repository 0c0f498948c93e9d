"""How errors leave the server: handlers raise, these render, in one place.

The admin API's clients parse JSON, so anything under /admin/ is `{"error": "..."}` (with `field` when
a setting is at fault); visitors' routes answer plain text.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from avatargen.storage.errors import StorageUnavailable

ADMIN_PREFIX = "/admin/"
ECHO_LIMIT = 60  # characters of a client's own value worth repeating back in an error message


def echo(value: object) -> str:
    """A client's value quoted for an error message, cut short: a 60 KB id need not travel back."""
    text = str(value)
    return repr(text) if len(text) <= ECHO_LIMIT else repr(text[:ECHO_LIMIT]) + f"... ({len(text)} characters)"


class FieldError(HTTPException):
    """A request value the server refuses; `field` names it (a [prompts] setting by its config name), so
    the owner's panel shows the message beside that field."""

    def __init__(self, message: str, field: str, status_code: int = 422) -> None:
        super().__init__(status_code, message)
        self.field = field


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith(ADMIN_PREFIX):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    body = {"error": exc.detail}
    if isinstance(exc, FieldError):
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)



async def storage_unavailable(request: Request, exc: Exception) -> Response:
    """The shared storage did not answer in time (Redis down or slow): 503 with what could not be done, for
    the owner to try again once it answers (visitors never get here: their path serves from memory)."""
    assert isinstance(exc, StorageUnavailable)
    return await http_error(request, HTTPException(503, str(exc)))


# Every app of the server renders its errors with these.
ERROR_HANDLERS = {HTTPException: http_error, StorageUnavailable: storage_unavailable}
