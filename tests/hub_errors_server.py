"""A local HTTP server that answers like the Hugging Face Hub does when things go wrong.

huggingface_hub's real client talks to it (``HF_ENDPOINT``) and turns its answers into its own exception
types, exactly as it would for huggingface.co: 404 + ``X-Error-Code: RepoNotFound`` for a missing repo,
``EntryNotFound`` for a missing file, 401 for a token the Hub refuses. One repo, ``acme/no-weights``, exists
and holds only ``config.json``; creating a repo named ``lost-connection`` gets no answer at all.

Slow and failing Hubs, for the deadlines effnet_zoo puts on every request:

- ``acme/slow-config`` sends its config.json a byte per second; ``acme/slow-weights`` sends config.json at
  once and its (announced 50 MB) model.safetensors a byte per second; ``acme/huge-config`` announces a 64 MiB
  config.json (and would stream it at full speed); creating a repo named ``never-answers`` reads the request and
  never answers. ``acme/rate-limited`` answers 429 with ``Retry-After: 3600``; ``acme/redirect-loop`` redirects
  to itself; ``acme/endless-config`` announces a small config.json to a HEAD and streams an endless chunked body
  to a GET, ``acme/lying-config`` announces 10^12 bytes to the GET.
- ``start("trickle")``: every answer, the reachability check included, sends its status line and headers a
  byte at a time. ``start("500")``: every request is answered HTTP 500, as a Hub in an outage does.

``server.files`` maps a path (``/ORG/NAME/resolve/main/FILE``) to bytes served at full speed, as a healthy Hub
does; ``server.requests`` lists ``(method, path)`` of every request, to check what a client fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = json.dumps({"architecture": "effnet_v1_b0", "num_classes": 1000, "pretrained_cfg": {}}).encode()
TRICKLE_S = 1.0  # seconds between the bytes of a trickled body (per-read timeouts never fire)
HEADER_TRICKLE_S = 0.5  # seconds between the bytes of trickled status lines and headers
SLOW_WEIGHTS_BYTES = 50 * 2**20
HUGE_CONFIG_BYTES = 64 * 2**20  # 8 times what a model config may take
GIVE_UP_S = 300  # a slow answer stops after this, whatever the client does


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: clients reuse connections

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, data: bytes, pause: float = 0.0) -> bool:
        """Write ``data`` (a byte every ``pause`` seconds if set); False once the client has gone."""
        try:
            if not pause:
                self.wfile.write(data)
                return True
            ends = time.monotonic() + GIVE_UP_S
            for i in range(len(data)):
                if self.server.stopping.is_set() or time.monotonic() > ends:
                    return False
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(pause)
            return True
        except OSError:  # the client hung up
            return False

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", slow_body: bool = False,
               length: int | None = None) -> None:  # fmt: skip
        head = f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
        for key, value in {**headers, "Content-Length": str(len(body) if length is None else length)}.items():
            head += f"{key}: {value}\r\n"
        trickle = self.server.mode == "trickle"
        if not self._send((head + "\r\n").encode("latin-1"), HEADER_TRICKLE_S if trickle else 0):
            self.close_connection = True
            return
        if self.command != "HEAD" and not self._send(body, TRICKLE_S if slow_body else 0):
            self.close_connection = True

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, headers, json.dumps({"error": message}).encode())

    def _file(self, body: bytes, slow: bool = False, length: int | None = None) -> None:
        etag = hashlib.sha1(body).hexdigest() if length is None else f"{length:040x}"
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        self._reply(200, headers, body, slow_body=slow, length=length)

    def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.server.requests.append((self.command, path))
        if self.server.mode == "500":
            self._error(500, None, "Internal Error - We're working hard to fix this as soon as possible!")
        elif path in self.server.files:
            self._file(self.server.files[path])
        elif path in ("/acme/no-weights/resolve/main/config.json", "/acme/slow-weights/resolve/main/config.json"):
            self._file(CONFIG)
        elif path == "/acme/slow-config/resolve/main/config.json":
            self._file(CONFIG, slow=True)
        elif path == "/acme/slow-weights/resolve/main/model.safetensors":
            self._file(b"\0" * 64 * 2**10, slow=True, length=SLOW_WEIGHTS_BYTES)  # never gets past the first bytes
        elif path == "/acme/huge-config/resolve/main/config.json":
            self._huge_config()
        elif path.startswith("/acme/rate-limited/"):
            self._reply(429, {"Retry-After": "3600", "X-Error-Message": "Too many requests"})
        elif path.startswith("/acme/redirect-loop/"):
            self._reply(302, {"Location": path})
        elif path == "/acme/endless-config/resolve/main/config.json":
            self._endless_config(chunked=True)
        elif path == "/acme/lying-config/resolve/main/config.json":
            self._endless_config(chunked=False)
        elif path.startswith(("/acme/no-weights/resolve/", "/acme/slow-config/resolve/", "/acme/slow-weights/")):
            self._error(404, "EntryNotFound", "Entry not found")
        else:
            self._error(401, "RepoNotFound", "Repository not found")

    def _huge_config(self) -> None:
        etag = f"{HUGE_CONFIG_BYTES:040x}"
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(HUGE_CONFIG_BYTES)}
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        if not self._send(head.encode()) or self.command == "HEAD":
            return
        chunk = b" " * 2**20
        for _ in range(HUGE_CONFIG_BYTES // len(chunk)):  # as fast as the client reads
            if self.server.stopping.is_set() or not self._send(chunk):
                break
        self.close_connection = True

    def _endless_config(self, chunked: bool) -> None:
        """A HEAD that announces a small config.json; a GET that sends an endless chunked body, or announces
        10^12 bytes (and would send them)."""
        length = len(CONFIG) if self.command == "HEAD" else None if chunked else 10**12
        headers = {"X-Repo-Commit": COMMIT, "ETag": '"' + "e" * 40 + '"'}
        headers.update({"Transfer-Encoding": "chunked"} if length is None else {"Content-Length": str(length)})
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        if not self._send(head.encode()) or self.command == "HEAD":
            return
        chunk = b" " * 2**20
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n" if chunked else chunk
        ends = time.monotonic() + GIVE_UP_S
        while not self.server.stopping.is_set() and time.monotonic() < ends and self._send(framed):
            pass  # as fast as the client reads, until it hangs up
        self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path.split("?")[0]))
        if self.server.mode == "500":
            self._error(500, None, "Internal Error - We're working hard to fix this as soon as possible!")
        elif b"lost-connection" in body:  # the network drops mid-request: hang up without an answer
            self.close_connection = True
        elif b"never-answers" in body:  # the request is read, and then nothing comes back
            self.server.stopping.wait(GIVE_UP_S)
            self.close_connection = True
        else:
            self._error(401, None, "Invalid credentials in Authorization header")


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}

    def shutdown(self) -> None:
        self.stopping.set()  # slow answers stop too
        super().shutdown()


def start(mode: str = "errors") -> tuple[HubServer, str]:
    """A running server on a free local port, and its endpoint URL."""
    server = HubServer(mode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
