"""Small file helpers shared by every stage: atomic writes, JSONL, content hashes.

Every output is written to a temporary name in the same folder and renamed into place, so a
killed run never leaves a half-written file that a later stage would trust.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .errors import DiskFullError, UserError, disk_full_cause


# Workdirs this process writes in (lexical absolute path, resolved path): set by confine_to when a command takes
# a workdir's lock. A path written under one must resolve inside it: a symlinked folder (or file) inside a workdir
# never makes tunesweep write outside it.
_CONFINED: list[tuple[str, str]] = []


def confine_to(root: str | os.PathLike) -> None:
    entry = (os.path.abspath(root), os.path.realpath(root))
    if entry not in _CONFINED:
        _CONFINED.append(entry)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def escaping_link(path: str | os.PathLike, root: str | os.PathLike) -> Optional[Path]:
    """The symlink through which `path` (inside `root` by name) resolves outside `root`, or None."""
    real_root = os.path.realpath(root)
    path = Path(os.path.abspath(path))
    if _inside(os.path.realpath(path), real_root):
        return None
    for p in [*reversed(path.parents), path]:  # the first link on the way that leads out
        if p.is_symlink() and not _inside(os.path.realpath(p), real_root):
            return p
    return path


def check_confined(path: str | os.PathLike) -> None:
    """A UserError when `path` lies in a confined workdir by name but a symlink takes it outside."""
    for lexical, real in _CONFINED:
        if _inside(os.path.abspath(path), lexical):
            link = escaping_link(path, lexical)
            if link is not None:
                raise UserError(f"{link}: a symlink that leads out of the workdir {lexical} (to "
                                f"{os.path.realpath(link)}); tunesweep writes only inside its workdir: remove the link")


def open_no_follow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink at `path` itself (and one leading out of a confined workdir) in one line."""
    check_confined(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path}: is a symlink (to {os.path.realpath(path)}); tunesweep does not write through "
                            "links: remove it") from None
        raise


class LogFileHandler(logging.FileHandler):
    """A log file appended to without following a symlink at its name (logs/<stage>.log, train.log)."""

    def __init__(self, path: str | os.PathLike):
        check_confined(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self):
        fd = open_no_follow(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding="utf-8")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A full disk (ENOSPC, EDQUOT) while writing is a DiskFullError naming `path`: the temporary file is
    removed and `path` keeps what it held before, so nothing half-written is left."""
    path = Path(path)
    tmp = None
    check_confined(path)  # the rename replaces a link at `path` itself, but a linked folder would lead out
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        # mkstemp creates 0600; outputs are shared tables, so give them the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if disk_full_cause(exc) is None:
            raise
        if tmp is not None and tmp.exists():
            tmp.unlink()  # first, so the message counts the space it held as free
        raise DiskFullError(path, exc) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonl_dumps(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_text(path, jsonl_dumps(records))


def read_jsonl_rows(path: str | os.PathLike, unit: str = "line") -> tuple[list[tuple[int, object]], list[str]]:
    """(line number, value) for every non-blank line, and one fault per line that is not JSON,
    named by file and `unit` ("line", or "row" where the lines are a dataset's rows)."""
    rows, faults = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                faults.append(f"{path}: {unit} {lineno}: not valid JSON ({exc.msg})")
    return rows, faults


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by tunesweep; a broken line is reported by file and line."""
    rows, faults = read_jsonl_rows(path)
    if faults:
        raise UserError(faults[0])
    return [value for _, value in rows]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """The sha256 of a text's UTF-8 bytes (an answer's digest in the judge's files)."""
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike, skip: Iterable[str] = ()) -> str:
    """Hash every file under `root` (relative name + content), skipping top-level names in `skip`."""
    root = Path(root)
    skip = set(skip)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or rel.name.startswith("."):
            continue
        h.update(str(rel).encode())
        h.update(b"\0")
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def fingerprint(obj) -> str:
    """A stable hash of a JSON-able object: what a stage records as 'the inputs of this output'."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())[:16]


def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts (run seed, config name, row id): same parts, same seed."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
