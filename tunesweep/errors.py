"""The one exception type for user mistakes, and the disk-full case.

A UserError is printed as a single line (no traceback) and the process exits with code 2.
A full disk (ENOSPC, EDQUOT) is not a bug either: `disk_full_message` turns it into one such line
naming the file and the filesystem. Anything else that escapes is a bug in tunesweep and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Libraries that wrap the OSError (safetensors' Rust writer, for one) keep only its text. torch.save (TRL's
# optimizer.pt, rng_state.pth) drops even that: its zip writer checks its position after every write, and a short
# write on a full disk reads "[enforce fail at inline_container.cc] . unexpected pos 576 vs 534" (torch 2.13, seen
# on a full tmpfs; older releases say "PytorchStreamWriter failed writing file ...: file write failed").
DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "StorageFull", "unexpected pos ",
                   "PytorchStreamWriter failed writing file")


class UserError(Exception):
    """Bad input from the user: a config key, a data row, a missing file."""

    exit_code = 2


def disk_full_cause(exc: BaseException) -> Optional[BaseException]:
    """The exception in `exc`'s chain (itself, its cause, its context) that says the disk is full, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if not isinstance(exc, UserError) and any(t in str(exc) for t in DISK_FULL_TEXTS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _filesystem(path: Path) -> tuple[Path, Optional[tuple]]:
    """(mount point, disk usage) of the filesystem that holds `path` (its nearest existing parent)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        return mount, shutil.disk_usage(p)
    except OSError:
        return mount, None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def disk_full_message(exc: BaseException, path: Optional[str | os.PathLike] = None,
                      atomic: bool = False) -> Optional[str]:
    """One line for a full disk (None when `exc` is something else): the file being written (`path`, else the
    one the OSError names), which filesystem and how much it has free, and that a rerun continues. `atomic`:
    the write was tunesweep's own temporary-file-and-rename (files.atomic_path), so nothing half-written is left."""
    cause = disk_full_cause(exc)
    if cause is None:
        return None
    path = path or getattr(cause, "filename", None)
    what = "the disk quota is exceeded" if getattr(cause, "errno", None) == errno.EDQUOT else "the disk is full"
    if path:
        mount, usage = _filesystem(Path(path))
        free = f"{_size(usage.free)} free of {_size(usage.total)}" if usage else "free space unknown"
        head = f"{path}: {what} while writing it ({free} on the filesystem mounted at {mount})"
    else:
        said = str(cause).splitlines()[0][:200] if str(cause) else repr(cause)
        head = f"{what} while writing an output ({said})"
    left = ("nothing half-written is left" if atomic else
            "what was being written is not trusted (it is redone)")
    return (f"{head}; finished outputs are kept and {left}; free some space (or point workdir at another disk) "
            "and rerun: it continues where it stopped")


class DiskFullError(UserError):
    """A write that failed because the disk is full: one line naming the file (see disk_full_message)."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        super().__init__(disk_full_message(cause, path, atomic=True) or f"{path}: {cause}")
