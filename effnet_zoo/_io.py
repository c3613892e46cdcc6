"""Writing files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from ._text import first_line


def user_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under the user's umask.

    ``mkstemp`` / ``mkdtemp`` create 0600 / 0700 whatever the umask; what is renamed into place must not stay so.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def remove(path: Path) -> None:
    """Delete a folder tree, a file or a link (a link itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# Below this many free bytes, a failed write is taken for a full disk: torch.save then reports only
# "[enforce fail at inline_container.cc] unexpected pos", safetensors "I/O error".
_NEARLY_FULL = 16 * 2**20


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error``, raised while writing into ``folder``, comes from a full disk (or quota)."""
    for e in (error, error.__cause__, error.__context__):
        if e is None:
            continue
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
            return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def no_space(message: str) -> OSError:
    """An OSError with ENOSPC whose text is ``message`` alone (``OSError(errno, text)`` prefixes "[Errno 28]")."""
    error = OSError(message)
    error.errno = errno.ENOSPC
    return error


def full_disk_error(path: Path, error: BaseException) -> OSError:
    """The one message for a write that ran out of space: where, and that nothing of the user's was lost."""
    detail = first_line(error)
    return no_space(
        f"no space left on the disk holding {path.parent} while writing {path.name}; nothing was lost: "
        f"{path.name} is as it was before (or was never there) and the partial copy was removed. Free some space "
        f"and run again ({type(error).__name__}: {detail})"
    )


class Terminated(BaseException):
    """SIGTERM (sent by `timeout`, docker stop, SLURM, torchrun), raised where the program is, so that every
    ``finally`` runs: temporary files are removed and the run lock is released, as for Ctrl-C."""


_critical = {"depth": 0, "pending": None}


def stop_on_signal(signum: int, frame: object) -> None:
    """The command line's SIGTERM / SIGINT handler: stop by raising (Terminated / KeyboardInterrupt), except
    inside :func:`signals_deferred`, which raises it on leaving. Python runs handlers in the main thread whichever
    thread the signal reached, so this holds where a signal mask would not."""
    stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _critical["depth"]:
        _critical["pending"] = stop
        return
    raise stop


@contextlib.contextmanager
def signals_deferred():
    """Hold a stop signal (under :func:`stop_on_signal`) until the block ends: a temporary created inside is named
    before cleanup can be needed, and two renames are never separated."""
    _critical["depth"] += 1
    try:
        yield
    finally:
        _critical["depth"] -= 1
        if not _critical["depth"] and (stop := _critical["pending"]) is not None:
            _critical["pending"] = None
            raise stop


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    A kill or an exception at any point leaves the previous ``path`` (or none) in place, never a partial one; a
    full disk is reported as such.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        with signals_deferred():  # a stop signal is raised only once `tmp` names the file, inside this `try`
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
        os.chmod(tmp, user_mode())
        write(Path(tmp))
        os.replace(tmp, path)
    except Exception as e:
        full = disk_full(e, path.parent)  # asked before the partial file goes, while the disk is still full
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if full:
            raise full_disk_error(path, e) from e
        raise
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def check_output(out: Path, inputs: list[Path], flag: str = "--out") -> None:
    """Refuse an output that is, contains, or lies inside one of the inputs: writing it would replace them."""
    target = out.resolve()
    for source in inputs:
        src = source.resolve()
        if target == src or target in src.parents or (src.is_dir() and src in target.parents):
            raise FileExistsError(
                f"{flag} {out} would overlap the input {source} (the same path, a folder holding it, or inside it): "
                "writing there replaces what is read; choose another location"
            )


def check_replaceable_file(path: Path) -> None:
    """``--force`` replaces a regular file (or a link, not its target); never a device, FIFO or folder."""
    if path.exists() and not path.is_symlink() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise FileExistsError(f"{path} is {kind}; --force replaces only a file effnet-zoo wrote: choose another path")
