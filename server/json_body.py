"""Request bodies as the admin API accepts them: a JSON object, and nothing JSON would not allow.

Python's json module reads more than JSON: `NaN` and `Infinity`, numbers too large for a float (read as
infinity), strings with lone surrogates (which no file can store), and nesting deep enough to exhaust
the stack. Each of those once reached the config file or ended in a 500. Here each is a 4xx that says
what was wrong and where, and a body too large to be settings is refused (413) before it is all read.
(Starlette's own body limit answers in plain text; the admin API's clients read JSON errors.)
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from server.errors import FieldError

MAX_BODY_BYTES = 1024 * 1024  # the largest valid prompt settings are about 0.4 MB
MAX_DEPTH = 8  # objects and lists inside one another; the API's own bodies need 3


def _number(text: str) -> float:
    """JSON numbers with a fraction or exponent, as floats; NaN for the non-JSON constants and overflows,
    which the walk below reports with the field they were in."""
    value = float(text)
    return value if math.isfinite(value) else math.nan


def _place(path: list[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".") or "the body"


def _field(path: list[str | int]) -> str:
    """The innermost named setting on a path (`films` for films[3], `both` for settings.both)."""
    return next((part for part in reversed(path) if isinstance(part, str)), "")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any, path: list[str | int]) -> None:
    """Walk the decoded value (without recursion: the depth is bounded here, not by the stack)."""
    pending: list[tuple[Any, list[str | int]]] = [(value, path)]
    while pending:
        item, where = pending.pop()
        if len(where) > MAX_DEPTH:
            raise HTTPException(400, f"the request body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, float) and math.isnan(item):
            raise FieldError(f"{_place(where)}: must be a finite number (NaN and infinities are not)", _field(where))
        if isinstance(item, str) and not _encodable(item):
            raise FieldError(f"{_place(where)}: not valid Unicode (it holds a lone surrogate)", _field(where))
        if isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    raise FieldError(f"{_place(where)}: a key is not valid Unicode (it holds a lone surrogate)",
                                     _field(where))
                pending.append((child, [*where, key]))
        elif isinstance(item, list):
            pending.extend((child, [*where, index]) for index, child in enumerate(item))


def _too_large() -> HTTPException:
    return HTTPException(413, f"the request body is larger than the admin API accepts ({MAX_BODY_BYTES} bytes)")


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body: {}), or a 4xx naming what is wrong with it."""
    raw = await _bounded_body(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=_number, parse_constant=lambda name: math.nan)
    except RecursionError:
        raise HTTPException(400, f"the request body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the request body must be a JSON object")
    _check(body, [])
    return body
