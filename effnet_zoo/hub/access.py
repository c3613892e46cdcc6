"""Reaching the Hugging Face Hub: deciding quickly that it cannot be reached, finding cached files, and one
clear sentence for every way a download or upload fails."""

from __future__ import annotations


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
        return f"{what}: the Hub answered HTTP {status} ({str(error).splitlines()[0]}); try again later"
    first = str(error).splitlines()[0] if str(error) else ""
    reason = f"{type(error).__name__}: {first}"
    return f"{what}: could not reach the Hub at {constants.ENDPOINT} ({reason}); check the network"


# One short request decides whether the Hub answers: huggingface_hub retries a refused or dropped connection five
# times with back-off (about 25 s per file, and timm asks for two), so an unreachable Hub cost ~50 s before any error.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint cannot be reached, found within ``timeout`` seconds; None if it answers at all (any
    HTTP status) or offline mode is on (huggingface_hub then answers from the cache itself, at once)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # any failure to get an answer: refused, DNS, timeout, TLS, proxy
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None


def cached_hub_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """The first of ``filenames`` the local Hub cache holds for ``repo_id``, as a path; None if none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return path
    return None


def unreachable_message(what: str, reason: str) -> str:
    """The one sentence for weights the Hub cannot serve because it cannot be reached, with the routes that exist."""
    from huggingface_hub import constants

    return (
        f"{what}: not in the local cache, and the Hub at {constants.ENDPOINT} could not be reached ({reason}); "
        "connect once (files are cached afterwards), point HF_HUB_CACHE at a cache that holds it (HF_HUB_OFFLINE=1 "
        "then skips the network), or convert weights you have with `effnet-zoo convert ... --out DIR` and load "
        "local-dir:DIR (docs/converting.md)"
    )
