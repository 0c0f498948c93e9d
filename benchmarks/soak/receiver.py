"""A local json:// receiver: Apprise POSTs one JSON message per notification; each is kept with its time and
the path it came to (the setup's name)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Message:
    at: float
    path: str
    body: dict[str, Any]


class Receiver:
    """A threading HTTP server on a loopback port, for as long as the `with` block lasts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {"unreadable": True}
                with receiver._lock:
                    receiver.messages.append(Message(time.time(), self.path.strip("/"), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the soak prints its tables only."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="notify receiver", daemon=True)

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self._server.server_address[1]}/{path}"

    def between(self, path: str, start: float, end: float) -> list[Message]:
        with self._lock:
            return [message for message in self.messages if message.path == path and start <= message.at <= end]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
