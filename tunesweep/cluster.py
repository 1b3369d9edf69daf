"""The Ray side of `execution.backend: ray`: joining a cluster, what each task and actor reserves, and
the check that a worker sees the run's workdir.

Only imported when the config (or the command line) asks for Ray: `backend: local` never imports
ray. The stages keep their own work (tunesweep.train.stage, tunesweep.generate.sharded): Ray places
it on the cluster's CPUs and GPUs and starts it again when a worker dies.
"""

from __future__ import annotations

import logging
import os
import secrets
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
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"execution.address = {address!r}: cannot join a Ray cluster ({first}); start one with "
                        "`ray start --head` or use address: local") from None
    res = ray.cluster_resources()
    log.info("ray %s: cluster with %g CPUs and %g GPUs (address %s)", ray.__version__, res.get("CPU", 0),
             res.get("GPU", 0), address)
    return ray


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


def cluster_summary(address: Optional[str]) -> str:
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
        if started_here:
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
