"""Reaching the Hugging Face Hub: a deadline on every request effnet_zoo makes or sets off, deciding quickly that
it cannot be reached, finding cached files, and one clear sentence for every way a download or upload fails."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._text import first_line, printable

# ---- deadlines ------------------------------------------------------------------------------------------------
# huggingface_hub's timeouts bound each read, not a request: a Hub sending a byte a second, or accepting a request
# and never answering, held a command for minutes, and its retries of an HTTP 500 took ~50 s. Every request made
# inside `hub_deadline` must finish by a deadline, whatever the Hub does.

TIMEOUT_ENV = "EFFNET_ZOO_HUB_TIMEOUT"
# The most one file transfer may take: B7's 266 MB model.safetensors arrives in 600 s at 3.6 Mbit/s, L2's 1.9 GB
# at 25 Mbit/s (a slower link sets more).
DEFAULT_TIMEOUT_S = 600.0
# Any other request (metadata, config.json, creating a repo) is answered in well under a second by a Hub that
# works, so 1/20 of the timeout (30 s) means it is stuck; the reachability check decides whether to use a cached
# copy instead, so it gets 1/200 (3 s). Neither gets less than a second.
REQUEST_SHARE, PROBE_SHARE, MIN_LIMIT_S = 1 / 20, 1 / 200, 1.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: past this the watchdog's clock arithmetic overflowed (1e308)
TRANSFER_BYTES = 2**20  # a request or answer carrying more than this is a file transfer: it gets the whole timeout


def hub_timeout() -> float:
    """The seconds one file transfer with the Hub may take: EFFNET_ZOO_HUB_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (MIN_LIMIT_S <= seconds <= MAX_TIMEOUT_S) or not text.isascii():
        raise ValueError(
            f"{TIMEOUT_ENV}={printable(text)!r}: expected a number of seconds from {MIN_LIMIT_S:g} to "
            f"{MAX_TIMEOUT_S:,.0f}, e.g. 1200"
        )
    return seconds


def _limit(share: float) -> float:
    total = hub_timeout()
    return min(total, max(total * share, MIN_LIMIT_S))


def _wait_longer() -> str:
    return (
        f"set {TIMEOUT_ENV}=SECONDS to wait longer (now {hub_timeout():g}: a file transfer may take all of it, "
        f"any other request 1/20, the reachability check 1/200, at least {MIN_LIMIT_S:g} s)"
    )


class HubTimeout(RuntimeError):
    """The Hub did not finish a request by its deadline (``hub_deadline``)."""

    def __init__(self, request: str, limit: float) -> None:
        from huggingface_hub import constants

        self.request, self.limit = request, limit
        super().__init__(
            f"the Hub at {constants.ENDPOINT} was too slow: no complete answer to {request} within {limit:g} s; "
            f"{_wait_longer()}"
        )


class HubServerError(RuntimeError):
    """The Hub answered with a server error (5xx) a request huggingface_hub was about to repeat, or said it is
    rate limiting (429): its back-off takes ~25 s per file (an hour for a long Retry-After) and ends in "could not
    be reached", so the first answer is the error."""

    def __init__(self, status: int, request: str, retry_after: str | None = None) -> None:
        self.status = status
        later = f"try again in {printable(retry_after[:20])} s" if retry_after else "try again later"
        why = " (too many requests)" if status == 429 else ""
        super().__init__(f"the Hub answered HTTP {status}{why} to {request}; {later}")


class HubConfigTooLarge(RuntimeError):
    """A config.json download that ran past the size a model config can be (the HEAD said otherwise)."""


def _cap_config_download(response: Any) -> None:
    """Hold a config.json download to MAX_CONFIG_BYTES, whatever its headers say (a server announcing 940 B and
    sending an endless body wrote 10 GB into the cache): a declared length over it is refused at once, and the
    body is counted as it arrives."""
    from .config import MAX_CONFIG_BYTES

    limit = MAX_CONFIG_BYTES
    error = HubConfigTooLarge(
        f"the Hub sent more than {limit:,} bytes for {_shown(response.request)}, over what a model config can be; "
        "nothing was kept"
    )
    if int(response.headers.get("content-length") or 0) > limit:
        raise error
    stream = response.stream
    base = next((c for c in type(stream).__mro__ if c.__name__ == "SyncByteStream"), None)
    if base is None:  # an async client: not what huggingface_hub downloads with
        return

    class Capped(base):
        def __iter__(self) -> Iterator[bytes]:
            seen = 0
            for chunk in stream:
                seen += len(chunk)
                if seen > limit:
                    raise error
                yield chunk

        def close(self) -> None:
            stream.close()

    response.stream = Capped()


def _shown(request: Any) -> str:
    """``METHOD URL`` for a message: escaped, without the query (a signed download URL carries its key there)."""
    url = request.url.copy_with(query=None, fragment=None)
    return printable(f"{request.method} {url}")


@dataclass
class _Call:
    """One request in flight: its deadline, the time that deadline allows, and the words for it in a message."""

    request: str
    deadline: float
    limit: float
    thread: int

    def timeout(self) -> HubTimeout:
        return HubTimeout(self.request, self.limit)


class _Operation:
    """The requests of one ``hub_deadline`` block: each must end by its own deadline and all by the block's.

    The client's request hook opens a call and bounds its timeouts by what is left; httpcore's trace extension
    hands over each new connection's socket and says when the call ends; a watchdog thread shuts the connections
    down at a deadline, which ends any read or write at once (a per-read timeout never fires on a trickle).
    """

    def __init__(self, seconds: float, parent: _Operation | None) -> None:
        self.deadline, self.total = time.monotonic() + seconds, seconds
        if parent and parent.deadline < self.deadline:
            self.deadline, self.total = parent.deadline, parent.total
        self.request_limit = min(seconds, _limit(REQUEST_SHARE))
        self.cond = threading.Condition()
        self.calls: dict[int, _Call] = {}
        self.expired: _Call | None = None
        self.closed = False
        self.sockets: list[socket.socket] = parent.sockets if parent else []  # the enclosing block's are reused
        # 5xx answers of this block's own requests: asking again is huggingface_hub's back-off (it does not ask
        # again when it has a cached copy to fall back to), while another block may ask for the same file anew
        self.server_errors: dict[tuple[str, str], int] = {}
        self.watchdog = threading.Thread(target=self._watch, name="effnet_zoo hub deadline", daemon=True)
        self.watchdog.start()

    def begin(self, request: Any) -> None:
        """The request hook: refuse a request past the deadline or repeating a 5xx; else bound it."""
        key = (request.method, str(request.url))
        thread = threading.get_ident()
        text = _shown(request)
        with self.cond:
            now = time.monotonic()
            if self.expired is None and now >= self.deadline:
                self.expired = _Call(text, self.deadline, self.total, thread)
            if self.expired is None and (previous := self.calls.get(thread)) and now >= previous.deadline:
                self.expired = previous  # its read timed out at the deadline before the watchdog saw it
            if self.expired is not None:
                raise self.expired.timeout()
            if key in self.server_errors:
                raise HubServerError(self.server_errors[key], text)
            length = int(request.headers.get("content-length") or 0)
            upload = length > TRANSFER_BYTES or "chunked" in request.headers.get("transfer-encoding", "")
            if upload or now + self.request_limit >= self.deadline:
                deadline, limit = self.deadline, self.total
            else:
                deadline, limit = now + self.request_limit, self.request_limit
            call = self.calls[thread] = _Call(text, deadline, limit, thread)
            self.cond.notify_all()
        left = max(deadline - now, 0.001)
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            phase: left if timeouts.get(phase) is None else min(timeouts[phase], left)
            for phase in ("connect", "read", "write", "pool")
        }
        request.extensions["trace"] = functools.partial(self._trace, call, request.extensions.get("trace"))

    def answered(self, response: Any) -> None:
        """The response hook: remember a 5xx (a repeat is refused); refuse a 429 at once (huggingface_hub would
        sleep for its Retry-After, an hour if the server says so); hold a config.json to the size a config can
        be; a file download gets the whole deadline."""
        request = response.request
        if response.status_code == 429:
            raise HubServerError(429, _shown(request), response.headers.get("retry-after"))
        if request.method == "GET" and request.url.path.endswith("/config.json") and response.status_code < 300:
            _cap_config_download(response)
            return
        with self.cond:
            if response.status_code >= 500:
                self.server_errors[(request.method, str(request.url))] = response.status_code
            elif request.method != "HEAD" and int(response.headers.get("content-length") or 0) > TRANSFER_BYTES:
                if call := self.calls.get(threading.get_ident()):
                    call.deadline, call.limit = self.deadline, self.total
                    self.cond.notify_all()

    def _trace(self, call: _Call, chained: Callable | None, name: str, info: dict[str, Any]) -> None:
        if chained is not None:
            chained(name, info)
        if name.endswith("connect_tcp.complete"):
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                own = sock.dup()  # the same connection, through a descriptor TLS and the pool do not close
                with self.cond:
                    self.sockets.append(own)
                    if self.expired is not None:
                        _shut(own)
        elif name.endswith(".failed") or ".response_closed." in name:
            with self.cond:
                if name.endswith(".failed") and self.expired is None and time.monotonic() >= call.deadline:
                    self.expired = call  # its read, bounded by what was left, timed out before the watchdog woke
                if self.calls.get(call.thread) is call:
                    del self.calls[call.thread]
                    self.cond.notify_all()
                expired = self.expired
            if name.endswith(".failed") and expired is not None and isinstance(info.get("exception"), Exception):
                # the cut connection's error becomes this one where it happens: huggingface_hub would retry or
                # resume a read error, with a warning and a pause, before the next request is refused
                raise expired.timeout() from info["exception"]

    def _watch(self) -> None:
        with self.cond:
            while not self.closed and self.expired is None:
                due = min(self.calls.values(), key=lambda c: c.deadline, default=None)
                now = time.monotonic()
                if due is not None and now >= due.deadline:
                    self.expired = due
                    for own in self.sockets:
                        _shut(own)
                    return
                self.cond.wait(None if due is None else due.deadline - now)

    def overran(self) -> _Call | None:
        """The call that missed its deadline, if one did."""
        with self.cond:
            call = self.calls.get(threading.get_ident())
            if self.expired is None and call is not None and time.monotonic() >= call.deadline:
                self.expired = call
            return self.expired

    def close(self, root: bool) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            sockets = list(self.sockets) if root else []
        for own in sockets:
            own.close()


def _shut(own: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        own.shutdown(socket.SHUT_RDWR)


_CURRENT: contextvars.ContextVar[_Operation | None] = contextvars.ContextVar("effnet_zoo_hub_operation", default=None)


@dataclass
class _Installed:
    """What the first open block replaced, for the last one to put back."""

    first: _Operation
    factory: Callable[[], Any]
    xet_disabled: bool
    blocks: int = 0


_INSTALL_LOCK = threading.Lock()
_installed: _Installed | None = None


def _active() -> _Operation | None:
    """This thread's operation; for threads huggingface_hub starts itself (parallel uploads), the first block's."""
    return _CURRENT.get() or (_installed.first if _installed else None)


def _on_request(request: Any) -> None:
    if (operation := _active()) is not None:
        operation.begin(request)


def _on_response(response: Any) -> None:
    if (operation := _active()) is not None:
        operation.answered(response)


def _bounded_client(factory: Callable[[], Any]) -> Any:
    """The client ``factory`` makes (the user's proxies and certificates kept), with the deadline's hooks added."""
    client = factory()
    hooks = client.event_hooks
    client.event_hooks = {"request": [*hooks["request"], _on_request], "response": [*hooks["response"], _on_response]}
    return client


def _install(operation: _Operation) -> None:
    """Give huggingface_hub a client with the hooks, through its client factory hook (the factory in place, the
    user's or its default, still makes the client); and plain HTTP instead of hf_xet, whose transfers run in Rust
    where no deadline reaches (HF_HUB_DISABLE_XET=1 for the block)."""
    global _installed
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    with _INSTALL_LOCK:
        if _installed is None:
            factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
            _installed = _Installed(operation, factory, constants.HF_HUB_DISABLE_XET)
            set_client_factory(functools.partial(_bounded_client, factory))
            constants.HF_HUB_DISABLE_XET = True
        _installed.blocks += 1


def _uninstall() -> None:
    global _installed
    from huggingface_hub import constants, set_client_factory

    with _INSTALL_LOCK:
        assert _installed is not None
        _installed.blocks -= 1
        if _installed.blocks == 0:
            set_client_factory(_installed.factory)  # closes the client with the hooks
            constants.HF_HUB_DISABLE_XET = _installed.xet_disabled
            _installed = None


@functools.cache
def _client_factory_supported() -> bool:
    """Whether huggingface_hub makes its HTTP client through a factory (1.0 and later, on httpx); transformers 4.x
    users have 0.x, where the package keeps working without the total deadlines."""
    try:
        from huggingface_hub import set_client_factory  # noqa: F401
        from huggingface_hub.utils import _http  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def hub_deadline(seconds: float | None = None) -> Iterator[None]:
    """Every request to the Hub inside the block, made here or by timm / huggingface_hub, ends by a deadline:
    ``seconds`` for the whole block (default: EFFNET_ZOO_HUB_TIMEOUT), 1/20 of the timeout for each request that
    moves no file. Overrunning raises HubTimeout; a 5xx answer huggingface_hub would retry raises HubServerError.
    Blocks nest (the inner one ends by the outer one's deadline too); the first one installs the hooks, the last
    one restores what was there."""
    if not _client_factory_supported():  # huggingface_hub < 1.0 (requests): only its own per-read timeouts apply
        yield
        return
    parent = _CURRENT.get()
    operation = _Operation(hub_timeout() if seconds is None else seconds, parent)
    token = _CURRENT.set(operation)
    _install(operation)
    try:
        yield
    except (HubTimeout, HubServerError, HubConfigTooLarge):
        raise
    except Exception as e:
        if (call := operation.overran()) is None:
            raise
        raise call.timeout() from e  # what the cut connection turned into (a read error, "not in the cache")
    finally:
        _CURRENT.reset(token)
        operation.close(root=parent is None)
        _uninstall()


# ---- reaching the Hub ------------------------------------------------------------------------------------------


def explain_hub_error(error: BaseException, what: str) -> str:
    """One sentence on why the Hub could not serve ``what`` and what to do, for each failure users meet."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    url = getattr(getattr(error, "response", None), "url", None)
    cache = f"the local cache ({constants.HF_HUB_CACHE})"
    if isinstance(error, (HubTimeout, HubServerError, HubConfigTooLarge)):
        return f"{what}: {error}"
    if isinstance(error, OfflineModeIsEnabled):
        return f"{what}: HF_HUB_OFFLINE=1 is set, so the Hub is not contacted; unset it to go online"
    if isinstance(error, LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.HF_HUB_OFFLINE
            else f"the Hub at {constants.ENDPOINT} could not be reached"
        )
        return (
            f"{what}: not in {cache}, and {why}. Connect once (files are cached afterwards), or copy a cache that "
            "holds it and point HF_HUB_CACHE at it"
        )
    if isinstance(error, GatedRepoError):
        return f"{what}: the repo is gated; accept its terms on the Hub and log in with `hf auth login`"
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"{what}: no such repo on the Hub (or it is private and this machine is not logged in); check the "
            "name, or log in with `hf auth login`"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{what}: the repo has no such branch, tag or commit; check the revision"
    if isinstance(error, EntryNotFoundError):
        return (
            f"{what}: the repo lacks a file it needs ({url or error}); timm reads config.json and model.safetensors "
            "(or pytorch_model.bin): check that the repo holds a model saved for timm"
        )
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return (
            f"{what}: the Hub refused the credentials (HTTP {status}); log in with `hf auth login` or set HF_TOKEN "
            "to a token with write access to the repo"
        )
    if isinstance(error, HfHubHTTPError):
        return f"{what}: the Hub answered HTTP {status} ({first_line(error)}); try again later"
    first = first_line(error)
    reason = f"{type(error).__name__}: {first}"
    return f"{what}: could not reach the Hub at {constants.ENDPOINT} ({reason}); check the network"


# One short request decides whether the Hub answers: huggingface_hub retries a refused or dropped connection five
# times with back-off (about 25 s per file, and timm asks for two), so an unreachable Hub cost ~50 s before any error.


def hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached, found within 1/200 of EFFNET_ZOO_HUB_TIMEOUT (3 s); None if it
    answers at all (any HTTP status) or offline mode is on (huggingface_hub then answers from the cache itself)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return None
    limit = _limit(PROBE_SHARE)  # an unusable EFFNET_ZOO_HUB_TIMEOUT is its own error, not an unreachable Hub
    try:
        with hub_deadline(limit):
            get_session().head(constants.ENDPOINT, timeout=limit)  # huggingface_hub 0.x has no client hooks
    except HubTimeout as e:
        return f"no answer within {e.limit:g} s; {_wait_longer()}"
    except Exception as e:  # any failure to get an answer: refused, DNS, TLS, proxy
        first = first_line(e)
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None


def http_errors() -> tuple[type[BaseException], ...]:
    """The base error of the HTTP library huggingface_hub talks through (a redirect loop raised it raw)."""
    from huggingface_hub.utils import _http

    lib = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None) or getattr(_http, "requests", None)
    # requests' base is RequestException (its HTTPError misses redirect loops and connection errors); httpx's HTTPError
    error = getattr(getattr(lib, "exceptions", None), "RequestException", None) or getattr(lib, "HTTPError", None)
    return (error,) if isinstance(error, type) else ()


def check_hub_config_size(repo_id: str, revision: str | None, what: str) -> None:
    """Refuse a Hub repo whose config.json is larger than a model config can be, from the file's metadata
    (nothing downloaded): a 2 GB one took 4.8 GB of memory and left 2.1 GB in the cache."""
    from huggingface_hub import hf_hub_download

    from .config import CONFIG_NAME, MAX_CONFIG_BYTES

    with hub_deadline():
        size = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, dry_run=True).file_size
    if size is not None and size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"{what}: its {CONFIG_NAME} on the Hub is {size:,} bytes, over the {MAX_CONFIG_BYTES:,} a model config "
            "can need (ImageNet-22k's labels take 1.5 MB); it was not downloaded"
        )


def cached_hub_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """The first of ``filenames`` the local Hub cache holds for ``repo_id``, as a path; None if none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return path
    return None


def _cache_folder(repo_id: str) -> Path:
    """Where huggingface_hub's cache keeps ``repo_id`` (its documented layout: models--ORG--NAME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


MAX_REF_BYTES = 256  # a refs/<revision> file holds a 40-character commit hash


def check_cached_ref(repo_id: str, revision: str | None = None) -> None:
    """The Hub cache's ``refs/<revision>`` of ``repo_id`` must be a small regular file (a commit hash):
    huggingface_hub reads it whole, and a 1 GB one took 8 GB of memory. ValueError naming it otherwise."""
    from ..weights.common import special_file

    folder = _cache_folder(repo_id)
    ref = folder / "refs" / (revision or "main")
    if not os.path.lexists(ref):
        return
    kind = special_file(ref)
    if kind is None and ref.stat().st_size > MAX_REF_BYTES:
        kind = f"{ref.stat().st_size:,} bytes"
    if kind:
        raise ValueError(
            f"{ref} is {kind}, not a commit hash: this repo's copy in the Hub cache is damaged; delete {folder} and "
            "download it again"
        )


def cached_hub_entries(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> list[Path]:
    """Every one of ``filenames`` present in the Hub cache's snapshot of ``repo_id``, whatever it is: a regular
    file, or a FIFO / device / folder that ``try_to_load_from_cache`` passes over but timm would still open."""
    import re

    check_cached_ref(repo_id, revision)
    folder = _cache_folder(repo_id)
    commit = revision or "main"
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        try:
            commit = (folder / "refs" / commit).read_text().strip()  # checked above: a small regular file
        except OSError:
            return []
    snapshot = folder / "snapshots" / commit
    return [snapshot / f for f in filenames if "/" not in commit and os.path.lexists(snapshot / f)]


def unreachable_message(what: str, reason: str) -> str:
    """The one sentence for weights the Hub cannot serve because it cannot be reached, with the routes that exist."""
    from huggingface_hub import constants

    return (
        f"{what}: not in the local cache, and the Hub at {constants.ENDPOINT} could not be reached ({reason}); "
        "connect once (files are cached afterwards), point HF_HUB_CACHE at a cache that holds it (HF_HUB_OFFLINE=1 "
        "then skips the network), or convert weights you have with `effnet-zoo convert ... --out DIR` and load "
        "local-dir:DIR (docs/converting.md)"
    )
