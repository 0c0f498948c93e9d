"""Credentials never leave the process inside a message: a URL's user info is shown as `***`.

`sd.url` may not hold a password (config.py refuses it), but URLs also arrive from elsewhere (a
provider's answer, an exception's text), so whatever is logged, sent as an event or kept as a run's
error goes through `redact_url`: where URLs are formatted into errors, and in `RedactingFilter` on every
handler that writes or sends the product's log.
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ : the user info runs up to the first "@" of the authority (no "/", "?", "#" before it).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]+@")
# ?password=... or &password=... in a query (redis-py reads a password there too).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """A URL, or a text holding URLs, with each URL's user name and password (and a password given as a
    query parameter) replaced by ***."""
    return _QUERY_PASSWORD.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


class RedactingFilter(logging.Filter):
    """Hides URL credentials in a record's message and traceback; put it on each handler (a logger's
    filters do not apply to records from its children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_url(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_url(record.stack_info)
        return True
