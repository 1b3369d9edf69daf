"""Run one function in a fresh spawned process: the way tunesweep keeps process-wide side effects
(Unsloth patching transformers' model classes at import, a CUDA context that `del model` does not
free) out of everything that runs after it.

`run_isolated(func, *args, name=..., log_file=...)` starts a spawned child (no inherited state),
which logs to the console and to `log_file`, calls `func(*args)` and hands back its return value.
The child dies with its parent (PR_SET_PDEATHSIG on Linux, a watchdog thread elsewhere), so a
killed run leaves no orphan holding a GPU. Whatever goes wrong in the child reaches the caller as
one UserError line naming `name` and the log: a UserError raised there keeps its text; any other
exception, a signal (SIGKILL, the OOM killer) or a non-zero exit says what happened and where the
traceback is; a full disk (ENOSPC, EDQUOT) gives the one line `tunesweep <stage>` gives for it, naming the file.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

from .errors import UserError, disk_full_cause, disk_full_message
from .files import LogFileHandler

LOG_FORMAT = "tunesweep: %(message)s"
DISK_FULL_EXIT = 75  # the child's exit code when the disk is too full to hand back even its outcome


# The group watchdog: a process of its own (python -S, stdlib only), so that acting needs neither the
# watched interpreter's GIL nor a turn of its threads: it waits on pidfds for the run's process or its
# own parent (the engine child) to end, then SIGKILLs its process group, itself included.
_WATCHDOG = """
import os, select, signal, sys, time
pids = [int(p) for p in sys.argv[1:]]
try:
    poller = select.poll()
    for pid in pids:
        poller.register(os.pidfd_open(pid), select.POLLIN)
    poller.poll()
except OSError:  # no pidfd (old kernel, not Linux), or one of them is already gone
    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    while all(alive(pid) for pid in pids):
        time.sleep(0.2)
os.killpg(0, signal.SIGKILL)
"""


def _die_with_parent(parent_pid: int, group: bool = False) -> None:
    """Make this (child) process die with its parent, on SIGKILL of the parent too.

    group=True is for a child that starts processes of its own (vLLM's EngineCore and workers):
    PR_SET_PDEATHSIG is not inherited, so those would outlive it. The child becomes the leader of a
    process group of its own, and a watchdog process in that group kills the whole group when the
    parent or the child ends (a child that ends normally has shut its engine down already)."""
    if group:
        import subprocess

        os.setpgid(0, 0)
        subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, str(parent_pid), str(os.getpid())],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() == parent_pid:
            return
    except OSError:  # not Linux: fall back to polling
        pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="tunesweep-parent-watch").start()


def _child_main(func: Callable, args: tuple, result_path: str, log_file: str, parent_pid: int,
                log_level: int) -> None:
    _die_with_parent(parent_pid)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        file_handler = LogFileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    handlers[0].setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=log_level, handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        outcome = ("ok", func(*args))
    except UserError as exc:
        outcome = ("user_error", str(exc))
    except BaseException as exc:
        full = disk_full_message(exc)
        if full:  # a full disk is no bug: the one line the command line gives (the traceback with -v)
            logging.getLogger(__name__).debug("%s", traceback.format_exc())
            outcome = ("user_error", full)
        else:  # a bug or a library failure: keep the traceback in the log
            logging.getLogger(__name__).error("%s", traceback.format_exc())
            outcome = ("error", f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    tmp = result_path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(outcome, fh)
        os.replace(tmp, result_path)
    except OSError as exc:
        if disk_full_cause(exc) is None:
            raise
        if os.path.exists(tmp):
            os.unlink(tmp)
        os._exit(DISK_FULL_EXIT)  # not even the outcome fits: the parent says so by this exit code


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            sig = signal.Signals(-exitcode).name
        except ValueError:
            sig = f"signal {-exitcode}"
        hint = " (killed: out of memory, or by a user)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {sig}{hint}"
    return f"exited with code {exitcode}"


def run_isolated(func: Callable[..., Any], *args, name: str, log_file: str | os.PathLike | None = None) -> Any:
    """func(*args) in a fresh spawned process; its return value (picklable), or one UserError line."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    fd, result_path = tempfile.mkstemp(prefix="tunesweep-child-", suffix=".pickle")
    os.close(fd)
    os.unlink(result_path)
    log_file = str(log_file) if log_file else ""
    where = f"; log: {log_file}" if log_file else ""
    # Not a daemon: a training child may start its own workers (datasets' num_proc), which daemons may not do.
    proc = ctx.Process(target=_child_main, name=f"tunesweep-{name}",
                       args=(func, args, result_path, log_file, os.getpid(), logging.getLogger().getEffectiveLevel()))
    proc.start()
    try:
        proc.join()
    except BaseException:  # KeyboardInterrupt: take the child down with us
        proc.kill()
        proc.join()
        raise
    try:
        with open(result_path, "rb") as fh:
            status, value = pickle.load(fh)
    except FileNotFoundError:
        if proc.exitcode == DISK_FULL_EXIT:
            raise UserError(f"{name}: " + disk_full_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                                            result_path)) from None
        raise UserError(f"{name}: the process {describe_exit(proc.exitcode)} before finishing{where}") from None
    finally:
        if os.path.exists(result_path):
            os.unlink(result_path)
    if status == "ok":
        return value
    if status == "user_error":
        raise UserError(value)
    raise UserError(f"{name}: failed with {value}; " + (f"traceback in {log_file}" if log_file else "traceback above"))
