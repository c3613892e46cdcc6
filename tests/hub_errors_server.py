"""A local HTTP server that answers like the Hugging Face Hub does when things go wrong.

huggingface_hub's real client talks to it (``HF_ENDPOINT``) and turns its answers into its own exception
types, exactly as it would for huggingface.co: 404 + ``X-Error-Code: RepoNotFound`` for a missing repo,
``EntryNotFound`` for a missing file, 401 for a token the Hub refuses. One repo, ``acme/no-weights``, exists
and holds only ``config.json``; creating a repo named ``lost-connection`` gets no answer at all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = json.dumps({"architecture": "effnet_v1_b0", "num_classes": 1000, "pretrained_cfg": {}}).encode()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, headers, json.dumps({"error": message}).encode())

    def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/acme/no-weights/resolve/main/config.json":
            etag = hashlib.sha1(CONFIG).hexdigest()
            self._reply(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Type": "application/json"},
                        CONFIG)  # fmt: skip
        elif path.startswith("/acme/no-weights/resolve/"):
            self._error(404, "EntryNotFound", "Entry not found")
        else:
            self._error(401, "RepoNotFound", "Repository not found")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if b"lost-connection" in body:  # the network drops mid-request: hang up without an answer
            self.close_connection = True
            return
        self._error(401, None, "Invalid credentials in Authorization header")


def start() -> tuple[ThreadingHTTPServer, str]:
    """A running server on a free local port, and its endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
