"""Hub ids pinned to a commit: the ONE place tunesweep resolves a Hugging Face hub id.

A model `base` or a `dataset.source` may be a hub id (`org/name`), optionally with a `revision` (a
branch, tag or commit; default `main`). A stage resolves it once, with huggingface_hub's
`snapshot_download`, to a snapshot folder of the local cache, `.../models--org--name/snapshots/<commit>/`,
and loads everything from that folder, so nothing in the stage can load a newer upstream. The commit
(the folder's name, content-addressed by the hub) is the identity: `org/name@<commit>`. Offline
(HF_HUB_OFFLINE=1) a cached snapshot resolves from the cache; what cannot be resolved is one UserError
line naming the config key, the id and the revision, and how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A hub repo id: `name` or `org/name` (letters, digits, `-`, `_`, `.`); anything else is a local path.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# dataset.source values that are files, not hub ids (tunesweep.data.sources reads them).
DATASET_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
PREFIX = {"model": "models--", "dataset": "datasets--"}


@dataclass(frozen=True)
class Snapshot:
    """A hub id resolved to a commit and its local snapshot folder."""

    repo_id: str
    repo_type: str  # model | dataset
    revision: str  # as asked (main, a tag, a commit)
    commit: str
    path: str

    @property
    def identity(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def is_hub_model(base: str) -> bool:
    """True when a model `base` names a hub repo rather than a local folder."""
    return not Path(base).expanduser().exists() and bool(REPO_ID.match(base)) and ".." not in base


def is_hub_dataset(source: str) -> bool:
    """True when a `dataset.source` names a hub dataset rather than a file or builtin:tasks."""
    if source.startswith("builtin:") or Path(source).suffix.lower() in DATASET_FILE_SUFFIXES:
        return False
    return is_hub_model(source)


def _why(exc: Exception, repo_id: str, revision: str) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, RevisionNotFoundError):
        return f"the hub has no revision {revision!r} of {repo_id!r}"
    if isinstance(exc, RepositoryNotFoundError):
        return "the hub has no such repository (or it is private or gated: log in with `hf auth login`)"
    if isinstance(exc, HFValidationError):
        return "not a local folder, and not a valid hub id either"
    if isinstance(exc, LocalEntryNotFoundError):
        where = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the hub cannot be reached"
        return (f"there is no local folder or file of that name, revision {revision!r} is not in the hub cache "
                f"({constants.HF_HUB_CACHE}) and {where}")
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{exc.__class__.__name__}: {first}"


def resolve(repo_id: str, revision: Optional[str], repo_type: str, key: str) -> Snapshot:
    """The snapshot folder and commit of `repo_id` at `revision` (default main), downloading what the cache
    lacks when online; a UserError naming `key` (e.g. `models.llama.base`) when it cannot be resolved."""
    asked = revision or "main"
    try:
        from huggingface_hub import constants, snapshot_download

        # Offline, a commit revision must not ask the hub for its file list: the cached folder is the answer.
        path = snapshot_download(repo_id, revision=asked, repo_type=repo_type,
                                 local_files_only=constants.is_offline_mode())
    except Exception as exc:  # every way of failing ends the same: one line, no traceback
        rev_key = key.rsplit(".", 1)[0] + ".revision"
        raise UserError(
            f"{key} = {repo_id!r} (revision {asked!r}): cannot resolve it on the hub: {_why(exc, repo_id, asked)}; "
            f"run once online to cache it, set {rev_key} to a cached commit, or point {key} at a local "
            f"{'folder' if repo_type == 'model' else 'file'}") from None
    commit = Path(path).name
    if not COMMIT.match(commit):  # snapshot_download returns <cache>/<repo>/snapshots/<commit>
        raise UserError(f"{key} = {repo_id!r} (revision {asked!r}): resolved to {path}, which is not a snapshot "
                        "folder of the hub cache")
    return Snapshot(repo_id, repo_type, asked, commit, path)


def snapshot_identity(path: str | Path) -> Optional[str]:
    """`org/name@<commit>` for a snapshot folder of the hub cache (`.../models--org--name/snapshots/<commit>`),
    None for any other folder. A commit names its content, so this IS the folder's identity: no hashing."""
    p = Path(path)
    repo = p.parent.parent.name
    if not (COMMIT.match(p.name) and p.parent.name == "snapshots" and repo.startswith(PREFIX["model"])):
        return None
    return repo[len(PREFIX["model"]):].replace("--", "/") + "@" + p.name


def local_folder(checkpoint: str) -> str:
    """`checkpoint` itself, unless it is a pinned snapshot folder that this machine lacks (a Ray worker on
    another node, with a hub cache of its own): then the same commit from this machine's cache (downloaded
    when online), so every machine loads the very commit the stage pinned."""
    pinned = snapshot_identity(checkpoint)
    if pinned is None or Path(checkpoint).is_dir():
        return checkpoint
    repo_id, commit = pinned.rsplit("@", 1)
    try:
        return resolve(repo_id, commit, "model", "base").path
    except UserError:
        raise UserError(f"{checkpoint}: the base pinned to {pinned} is not on this machine and cannot be fetched "
                        "here; give every machine the same hub cache (HF_HUB_CACHE on a shared disk) or let it reach "
                        "the hub") from None
