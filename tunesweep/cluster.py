"""The Ray side of `execution.backend: ray`: joining a cluster, what each task and actor reserves, and
the check that a worker sees the run's workdir.

Only imported when the config (or the command line) asks for Ray: `backend: local` never imports
ray. The stages keep their own work (tunesweep.train.stage, tunesweep.generate.sharded): Ray places
it on the cluster's CPUs and GPUs and starts it again when a worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from .config import ExecutionConfig, ExperimentConfig
from .errors import UserError
from .files import write_text
from .layout import RAY_PROBE

log = logging.getLogger(__name__)
PROBE_NAME = RAY_PROBE  # written in the workdir by the driver, read by every task and actor


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("execution.backend = ray: ray is not installed (pip install 'ray[default]>=2.40', "
                        "or the project's cpu/gpu extra)") from None
    return ray


def connect(execution: ExecutionConfig):
    """Join (or start) the Ray cluster the config names; returns the ray module. A Ray already
    initialized in this process (a test's, a notebook's) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = execution.address
    kwargs = {"include_dashboard": False, "log_to_driver": True}
    try:
        if address == "local":
            ray.init(**kwargs)
        else:
            reach(address, execution.connect_timeout, "execution.address")
            with deadline(execution.connect_timeout, f"execution.address = {address!r}"):
                ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"execution.address = {address!r}: cannot join a Ray cluster ({first}); start one with "
                        "`ray start --head` or use address: local") from None
    res = ray.cluster_resources()
    log.info("ray %s: cluster with %g CPUs and %g GPUs (address %s)", ray.__version__, res.get("CPU", 0),
             res.get("GPU", 0), address)
    return ray


def gcs_endpoint(address: str) -> Optional[tuple[str, int]]:
    """(host, port) that `address` joins (auto: RAY_ADDRESS or the cluster `ray start` recorded), None when there is
    none to probe (auto with no cluster: Ray says so itself, at once)."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or ""
        if not address or address == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address
                address = canonicalize_bootstrap_address("auto") or ""
            except Exception:  # Ray's own lookup failed: ray.init reports it
                return None
        if not address or address == "local":
            return None
    default_port = 10001 if address.startswith("ray://") else 6379
    rest = address.removeprefix("ray://")
    if rest.startswith("["):  # [v6 address]:port
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return None


def reach(address: str, timeout: float, key: str) -> None:
    """A TCP connection to the cluster's address within `timeout` s, or one line: Ray itself would retry an
    unreachable address for minutes, deaf to SIGTERM."""
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or exc.__class__.__name__)
        raise UserError(f"{key} = {address!r}: cannot reach a Ray cluster at {endpoint[0]}:{endpoint[1]} within "
                        f"{timeout:g} s ({why}); start one with `ray start --head`, fix the address, or raise "
                        "execution.connect_timeout") from None


@contextlib.contextmanager
def deadline(timeout: float, what: str):
    """Bound a call into Ray that can block in native code, where neither a Python exception nor SIGTERM reaches
    it: past `timeout` s, or on SIGTERM / SIGINT meanwhile, print one line and end the process (the kernel then
    frees the workdir's flock). Signals are seen through signal.set_wakeup_fd, which the C-level handler writes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    done = threading.Event()
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # no Python handler can be installed here: no watch, as before
        os.close(read_fd)
        os.close(write_fd)
        yield
        return

    def watch():
        ends = time.monotonic() + timeout
        while not done.is_set():
            left = ends - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(0.0, min(left, 0.5)))
            if done.is_set():
                return
            if ready:
                signum = os.read(read_fd, 1)[0]
                if signum in (signal.SIGTERM, signal.SIGINT):
                    sys.stderr.write(f"tunesweep: error: {what}: stopped by {signal.Signals(signum).name} while "
                                     "joining the Ray cluster; nothing was started\n")
                    sys.stderr.flush()
                    os._exit(128 + signum)
            elif left <= 0:
                sys.stderr.write(f"tunesweep: error: {what}: no answer from the Ray cluster within {timeout:g} s "
                                 "(execution.connect_timeout); is it a Ray head's address?\n")
                sys.stderr.flush()
                os._exit(UserError.exit_code)

    watcher = threading.Thread(target=watch, daemon=True, name="tunesweep-ray-deadline")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


def join(cfg: ExperimentConfig, key: str, gpus: float, what: str):
    """A stage's start on Ray: join the cluster, check that `gpus` (execution.<key>) fit on one of its GPUs
    budget, and write the shared-workdir probe. Returns (ray, shared) for the tasks and actors."""
    ray = connect(cfg.execution)
    have = ray.cluster_resources().get("GPU", 0)
    if gpus > have:
        raise UserError(f"execution.{key} = {gpus:g}: the Ray cluster has {have:g} GPUs, no {what} could start")
    return ray, write_probe(cfg.path)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]


def kill_actor(actor) -> None:
    """Kill a Ray actor (its processes with it), best effort: one that is already gone is fine."""
    import ray

    try:
        ray.kill(actor)
    except Exception:
        pass


def retry_or_fail(actor, exc: BaseException, failures: int, retries: int, failed: str, rerun: str) -> str:
    """After the `failures`-th failure of `actor`'s work: kill it, then raise one line (`failed`, e.g. "tiny:
    generation replica 1/2 (...)", the count, execution.retries, the error, and `rerun`: what a rerun does) when
    the retries are spent; else the error's first line, for the caller's warning before it starts the work again."""
    first = first_line(getattr(exc, "cause", None) or exc)
    kill_actor(actor)
    if failures > retries:
        raise UserError(f"{failed} failed {failures} time(s) (execution.retries = {retries}): {first}; {rerun}")
    return first


def user_error(exc: BaseException) -> Optional[UserError]:
    """The UserError a Ray task or actor method raised (a user's mistake, never retried), else None."""
    cause = getattr(exc, "cause", None)
    return UserError(str(cause)) if isinstance(cause, UserError) else None


def engine_gpus(cfg: ExperimentConfig, on_cuda: bool) -> float:
    """GPUs one engine replica reserves: execution.engine_gpus, else tensor_parallel_size (0 on CPUs)."""
    if cfg.execution.engine_gpus is not None:
        return cfg.execution.engine_gpus
    return float(cfg.generation.engine.tensor_parallel_size) if on_cuda else 0.0


def train_gpus(cfg: ExperimentConfig, on_cuda: bool) -> float:
    return cfg.execution.train_gpus if on_cuda else 0.0


def score_gpus(cfg: ExperimentConfig, on_cuda: bool) -> float:
    return cfg.execution.score_gpus if on_cuda else 0.0


def write_probe(workdir: Path) -> tuple[str, str]:
    """(absolute workdir, token): a file every Ray worker must read back to prove it shares the workdir."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    write_text(workdir / PROBE_NAME, token)
    return str(workdir), token


def check_shared(workdir: str, token: str, what: str) -> None:
    """Inside a Ray task or actor: fail with one line when this node does not see the driver's workdir."""
    probe = Path(workdir) / PROBE_NAME
    try:
        seen = probe.read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise UserError(f"{what}: the Ray worker on {os.uname().nodename} cannot see the workdir {workdir} "
                        "(a shared filesystem mounted at the same path on every node is needed)")


def cluster_summary(address: Optional[str], connect_timeout: float = 30.0) -> str:
    """`tunesweep doctor`: Ray's version, and the cluster's CPUs and GPUs when an address is given."""
    from .provenance import package_version

    text = package_version("ray")
    if text is None:
        return "not installed (needed only for execution.backend: ray)"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return text + " (no cluster address given: --ray-address or RAY_ADDRESS)"
    import ray
    try:
        started_here = not ray.is_initialized()
        # Also when this process is in a Ray already (a library caller, a test worker): the address asked about
        # must answer, or the summary would describe the cluster the process happens to be in.
        if address != "local":
            reach(address, connect_timeout, "--ray-address")
        if started_here:
            with deadline(connect_timeout, f"--ray-address {address}"):
                ray.init(address=None if address == "local" else address, include_dashboard=False,
                         log_to_driver=False, num_cpus=None)
        res = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        text += f"; cluster {address}: {nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
        if started_here:
            ray.shutdown()
    except Exception as exc:  # doctor reports, it does not fail
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        text += f"; cluster {address}: not reachable ({first[:200]})"
    return text
