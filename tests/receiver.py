"""A real HTTP receiver for the owner's messages: what Apprise's `json://host:port/path` URLs POST to.

Paths starting with /broken answer 500 (a webhook that is down); every other path takes the message.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Listens on a free loopback port in a thread while used as a context manager; `messages` by path."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                broken = self.path.startswith("/broken")
                self.send_response(500 if broken else 200)
                self.send_header("content-length", "0")
                self.end_headers()
                if not broken:
                    with receiver.arrived:
                        receiver.messages.append((self.path, json.loads(body)))
                        receiver.arrived.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        """The Apprise URL that posts to `path` here."""
        return f"json://127.0.0.1:{self._server.server_address[1]}{path}"

    def wait_for(self, check: Any, timeout: float) -> dict[str, Any]:
        """The first message whose body passes `check`, waiting up to `timeout` seconds for it."""
        with self.arrived:
            found = self.arrived.wait_for(lambda: next((m for _, m in self.messages if check(m)), None), timeout)
        if found is None:
            raise TimeoutError(f"no such message within {timeout} s; got {self.messages}")
        return found

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
