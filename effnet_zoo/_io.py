"""Writing files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    A kill or an exception at any point leaves the previous ``path`` (or none) in place, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, user_mode())
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
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
