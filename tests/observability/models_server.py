"""A loopback HTTP server that answers like a model provider's models endpoint, for the health-check tests.

It serves OpenAI-style `GET /v1/models` (a list) and Anthropic-style `GET /v1/models/{id}`, accepting only the key
it was given (as `Authorization: Bearer` or `x-api-key`). A wrong key gets 401 with the received header echoed in
the body, as some servers do, so tests can prove that no key leaks into a report. `/broken/v1/models` answers 500,
echoing the header too.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ModelsServer:
    """What the running server knows and saw."""

    key: str
    models: list[str]
    port: int = 0
    seen_keys: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The OpenAI-style API root."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        """The server root (Anthropic's base URL has no `/v1`)."""
        return f"http://127.0.0.1:{self.port}"


def _handler(state: ModelsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            bearer = self.headers.get("Authorization", "")
            given = bearer.removeprefix("Bearer ") if bearer else self.headers.get("x-api-key", "")
            state.seen_keys.append(given)
            if self.path.startswith("/broken/"):
                self._send(500, {"error": f"internal error handling {bearer or given}"})
                return
            if given != state.key:
                self._send(401, {"error": {"message": f"Incorrect API key provided: {given}"}})
                return
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in state.models]})
                return
            prefix = "/v1/models/"
            if self.path.startswith(prefix) and self.path[len(prefix) :] in state.models:
                self._send(200, {"type": "model", "id": self.path[len(prefix) :]})
                return
            self._send(404, {"error": {"type": "not_found_error", "message": "model not found"}})

    return Handler


@contextmanager
def models_server(*, key: str, models: list[str]) -> Iterator[ModelsServer]:
    """Serve on 127.0.0.1 (a free port) in a thread until the block ends."""
    state = ModelsServer(key=key, models=models)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="models-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]
