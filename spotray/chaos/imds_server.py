"""A loopback EC2 instance metadata service (IMDSv2) that serves spot notices on demand.

moto has no spot notices (it answers 500 on `spot/instance-action`), so tests and
`spotray chaos` run one of these per simulated node, each on its own 127.0.0.1 port, and
point `spotray watch --imds-url` at it. It speaks the parts of the protocol the watcher uses:
tokens (PUT, TTL header, 401 on a missing or unknown token), `spot/instance-action`,
`events/recommendations/rebalance` (each 404 until set), `instance-id` and
`placement/availability-zone`.

State is set in-process (`serve_notice`, `serve_rebalance`, `forget_tokens`, `serve_garbage`)
or, from another process, over HTTP: `PUT /spotray/instance-action` and
`PUT /spotray/rebalance` with a JSON body (`null` clears), `POST /spotray/forget-tokens`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spotray.spot.imds import (
    INSTANCE_ACTION_PATH,
    INSTANCE_ID_PATH,
    REBALANCE_PATH,
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
)

ZONE_PATH = "/latest/meta-data/placement/availability-zone"  # read by cluster.yaml's `ray start`

MAX_TTL_S = 21600


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeIMDS:
    """One simulated instance's metadata service on 127.0.0.1."""

    def __init__(
        self, instance_id: str = "i-0spotray000000000", port: int = 0, zone: str = "us-east-1a"
    ) -> None:
        self.instance_id = instance_id
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._bodies: dict[str, str] = {INSTANCE_ID_PATH: instance_id, ZONE_PATH: zone}
        self.requests: dict[str, int] = {}  # path -> count, for tests
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeIMDS:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-imds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeIMDS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it serves ------------------------------------------------------------------

    def serve_notice(
        self, action: str = "terminate", lead_s: float = 120.0, at: datetime | None = None
    ) -> datetime:
        """Announce that the instance goes at `at` (default: `lead_s` from now); returns it."""
        at = at or datetime.now(timezone.utc) + timedelta(seconds=lead_s)
        self._set(INSTANCE_ACTION_PATH, json.dumps({"action": action, "time": iso(at)}))
        return at

    def serve_rebalance(self, at: datetime | None = None) -> None:
        self._set(REBALANCE_PATH, json.dumps({"noticeTime": iso(at or datetime.now(timezone.utc))}))

    def serve_garbage(self, path: str = INSTANCE_ACTION_PATH, body: str = "<html>oops") -> None:
        self._set(path, body)

    def clear(self, path: str = INSTANCE_ACTION_PATH) -> None:
        self._set(path, None)

    def forget_tokens(self) -> None:
        """As after a metadata-service restart: every token now gets 401."""
        with self._lock:
            self._tokens.clear()

    def _set(self, path: str, body: str | None) -> None:
        with self._lock:
            if body is None:
                self._bodies.pop(path, None)
            else:
                self._bodies[path] = body

    # -- HTTP --------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: tests and chaos poll a lot
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _count(self) -> None:
                with imds._lock:
                    imds.requests[self.path] = imds.requests.get(self.path, 0) + 1

            def do_PUT(self) -> None:
                self._count()
                if self.path == TOKEN_PATH:
                    try:
                        ttl = int(self.headers.get(TTL_HEADER, ""))
                    except ValueError:
                        return self._reply(400, "missing or bad TTL header")
                    if not 1 <= ttl <= MAX_TTL_S:
                        return self._reply(400, "TTL out of range")
                    token = secrets.token_urlsafe(32)
                    with imds._lock:
                        imds._tokens[token] = time.monotonic() + ttl
                    return self._reply(200, token)
                if self.path in ("/spotray/instance-action", "/spotray/rebalance"):
                    length = int(self.headers.get("Content-Length", 0))
                    value = json.loads(self.rfile.read(length) or b"null")
                    path = INSTANCE_ACTION_PATH if self.path.endswith("instance-action") else REBALANCE_PATH
                    imds._set(path, None if value is None else json.dumps(value))
                    return self._reply(200)
                return self._reply(404)

            def do_POST(self) -> None:
                self._count()
                if self.path == "/spotray/forget-tokens":
                    imds.forget_tokens()
                    return self._reply(200)
                return self._reply(404)

            def do_GET(self) -> None:
                self._count()
                token = self.headers.get(TOKEN_HEADER)
                with imds._lock:
                    valid = token is not None and imds._tokens.get(token, 0) > time.monotonic()
                    body = imds._bodies.get(self.path)
                if not valid:
                    return self._reply(401)
                if body is None:
                    return self._reply(404, "Not Found")
                return self._reply(200, body)

        return Handler
