"""A full disk, for real: the stage runs with its workdir on a 64 KiB tmpfs, mounted in a user and mount
namespace of its own (`unshare --user --map-root-user --mount`, no root needed on the host). ENOSPC must be
one line and exit 2, naming the file and the filesystem, with no traceback and no temporary or half-written
file left; in a stage's child process (isolation.run_isolated, as training runs) the same one line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from helpers import REPO

SIZE = "64k"


@lru_cache(maxsize=1)
def namespace_problem() -> str | None:
    """Why a tiny tmpfs cannot be mounted here (None when it can): probed once."""
    import shutil
    import tempfile

    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    with tempfile.TemporaryDirectory(prefix="tunesweep-ns-probe-") as d:
        try:
            r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                f"mount -t tmpfs -o size={SIZE} tmpfs {shlex.quote(d)}"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare failed to run ({exc})"
    if r.returncode != 0:
        return f"this machine does not permit a user+mount namespace with a tmpfs ({r.stderr.strip()[:200]})"
    return None


@pytest.fixture
def on_full_disk(tmp_path):
    """run(script) -> CompletedProcess: `script` (sh) runs with DISK, a 64 KiB tmpfs, mounted in a namespace
    of its own; anything it must report about the files there it prints itself (the tmpfs ends with it)."""
    problem = namespace_problem()
    if problem:
        pytest.skip(f"no real full disk to test on: {problem}")
    disk = tmp_path / "disk"
    disk.mkdir()

    def run(script: str) -> subprocess.CompletedProcess:
        full = f"mount -t tmpfs -o size={SIZE} tmpfs {shlex.quote(str(disk))} && cd {shlex.quote(str(REPO))} && {script}"
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", full],
                              capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})

    run.disk = disk
    return run


def listing(stdout: str) -> list[str]:
    """The files `find` printed after the `echo rc=$?` line."""
    return [line for line in stdout.split("\nrc=", 1)[-1].splitlines()[1:] if line]


def test_split_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, on_full_disk, alpaca_demo_path):
    """The 400 Alpaca records split into ~300 KB of train.jsonl: it cannot fit in 64 KiB."""
    work = on_full_disk.disk / "work"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nworkdir: {work}\ndataset: {{source: {alpaca_demo_path}, test_size: 10}}\n"
                   "models:\n  - {name: m, base: x}\n")
    r = on_full_disk(f"{shlex.quote(sys.executable)} -m tunesweep split --config {shlex.quote(str(cfg))}; "
                     f"echo rc=$?; find {shlex.quote(str(on_full_disk.disk))} -type f")
    assert "rc=2" in r.stdout, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tunesweep: error: {work / 'alpaca_data' / 'train.jsonl'}: the disk is full while "
                           "writing it ("), last
    assert f"on the filesystem mounted at {on_full_disk.disk})" in last and "free of 64.0 KiB" in last
    assert "finished outputs are kept and nothing half-written is left" in last and "rerun" in last
    # Left on the disk: the workdir's lock file, nothing else (no .train.jsonl.*.tmp, no partial train.jsonl).
    assert listing(r.stdout) == [str(work / ".tunesweep.lock")], r.stdout


CHILD = """\
import sys
import tempfile
from pathlib import Path

from tunesweep.errors import UserError
from tunesweep.files import write_text
from tunesweep.isolation import run_isolated

if __name__ == "__main__":
    disk = Path(sys.argv[1])
    write_text(disk / "done.txt", "finished\\n")  # a finished output: it must survive what follows
    try:
        write_text(disk / "done.txt", "x" * 200_000)
    except UserError as exc:
        print("PARENT", exc)
    for func, out in ((write_text, "atomic.out"), (Path.write_text, "plain.out")):  # tunesweep's write, a library's
        try:
            run_isolated(func, disk / out, "x" * 200_000, name="finetune tiny")
        except UserError as exc:
            print("CHILD", exc)
    # The disk is full now (plain.out filled it): the child cannot even hand back its outcome file.
    tempfile.tempdir = str(disk)
    try:
        run_isolated(str, "fine", name="finetune tiny")
    except UserError as exc:
        print("OUTCOME", exc)
    print(disk / "done.txt", (disk / "done.txt").read_text().strip())
"""


def test_a_child_process_on_a_full_disk_gives_the_same_one_line(tmp_path, on_full_disk):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    disk = on_full_disk.disk
    r = on_full_disk(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(disk))}; "
                     f"echo rc=$?; find {shlex.quote(str(disk))} -type f")
    assert "rc=0" in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    parent = [x for x in lines if x.startswith("PARENT ")]
    child = [x for x in lines if x.startswith("CHILD ")]
    assert parent == [f"PARENT {disk / 'done.txt'}: the disk is full while writing it (" + parent[0].split(" (", 1)[1]]
    assert len(child) == 2, r.stdout
    # tunesweep's own write in the child: the very line the command line prints, file and filesystem named
    assert child[0].startswith(f"CHILD {disk / 'atomic.out'}: the disk is full while writing it (")
    assert "nothing half-written is left" in child[0]
    # a library's write that names no file: still one line about the full disk, not "the process died"
    assert child[1].startswith("CHILD the disk is full while writing an output ([Errno 28] No space left on device)")
    assert "rerun" in child[1]
    [outcome] = [x for x in lines if x.startswith("OUTCOME ")]
    assert outcome.startswith(f"OUTCOME finetune tiny: {disk}/tunesweep-child-") and ": the disk is full" in outcome
    assert f"{disk / 'done.txt'} finished" in lines  # the finished output is intact
    # No temporary file, nothing of the atomic write; the library's plain write leaves its partial file.
    assert sorted(listing(r.stdout)) == [str(disk / "done.txt"), str(disk / "plain.out")], r.stdout
