"""Generation on Ray: one model's sweep on R engine replicas, each a Ray actor with a shard of the test
rows (`execution.backend: ray`, `execution.replicas: R`): a contiguous range of rows, or, for a backend
whose rows depend on their batch (transformers: shared padding, one seed per batch; `row_batches`),
a contiguous run of the whole row list's batches, each run with its one-engine index, so every row
has the companions, padding and seed it has in one process and the files are the same.

`ShardedBackend` wraps the backend the stage picked (vLLM or transformers) and behaves as that
backend to the stage: same name, same per-config inputs, same messages. Each replica actor runs the
wrapped backend's own `run` on its shard (for vLLM: the usual engine child process, now a child of
the actor), so every config of the sweep still goes through one engine per replica. A config's
`ConfigDone` reaches the stage once every shard has delivered it, merged in row order; the per-request
seeds are the single-engine run's, sliced with the rows, so the files are the single engine's.

With `agreement_rows` > 0 (by default on CUDA, where kernels are not batch-invariant), once every config is
merged one more actor regenerates them all for a sample of rows spread over every shard, as ONE engine,
and an `AgreementDone` says per config how many of those rows are identical to the replicas' (the
manifest's `replica_agreement`).

An actor that dies (or whose engine fails) is started again, for the configs its shard has not
delivered yet, up to `execution.retries` times; after that the stage fails with one line naming the
model and the shard. A UserError raised by the backend (a prompt too long, ...) is not retried.

A race (generation.strategy race) asks the backend for a Session: `ShardedSession` opens the wrapped
backend's session in each replica actor once, and splits every round's rows among them the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Iterator, Optional

from ..cluster import check_shared, first_line, kill_actor, retry_or_fail, user_error
from ..config import DecodingConfig, ExperimentConfig
from ..errors import UserError
from .backend import (AgreementDone, Backend, ConfigDone, EngineBuilt, InvarianceCheck, Message, Request, Session,
                      identical_fraction)

log = logging.getLogger(__name__)


class EngineReplica:
    """The Ray actor (decorated with ray.remote when a run starts): the wrapped backend's `run` on one
    shard (a full sweep), or the wrapped backend's Session kept across requests (a race: `begin` per round);
    one message per `next()` call (None when the shard, or the round, is done)."""

    def __init__(self, backend: Backend, request: Request, shared: tuple[str, str], what: str):
        self._args = (backend, request, shared, what)
        self._messages = None
        self._session: Optional[Session] = None

    def _backend(self) -> tuple[Backend, Request]:
        # Here, not in __init__: a UserError from a method reaches the driver as itself (not retried).
        backend, request, shared, what = self._args
        check_shared(*shared, what)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        return backend, request

    def next(self) -> Optional[Message]:
        if self._messages is None:
            backend, request = self._backend()
            self._messages = backend.run(request)
        try:
            return next(self._messages)
        except StopIteration:
            return None

    def open(self) -> float:
        """The wrapped backend's session over the opening request's rows (in this actor: a vLLM engine child
        is the actor's child, as in a full sweep); its build time."""
        if self._session is None:
            backend, request = self._backend()
            self._session = backend.open(request)
        return self._session.build_s

    def begin(self, request: Request) -> Optional[Message]:
        """Run `request` (rows of the opening request) on the session, loading it first in an actor started
        again after a failure; the first message (the rest by `next`)."""
        self.open()
        self._messages = self._session.run(request)
        return self.next()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def pid(self) -> int:
        return os.getpid()


def shard_bounds(n_rows: int, replicas: int) -> list[tuple[int, int]]:
    """R contiguous [lo, hi) row ranges, sizes differing by at most one (no empty shard)."""
    r = max(1, min(replicas, n_rows))
    size, extra = divmod(n_rows, r)
    bounds, lo = [], 0
    for i in range(r):
        hi = lo + size + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def check_sample(n_rows: int, k: int) -> list[int]:
    """k row indices spread evenly from the first row to the last (so every shard has some), ascending."""
    k = min(k, n_rows)
    if k <= 1:
        return [0][:k]
    return sorted({round(i * (n_rows - 1) / (k - 1)) for i in range(k)})


def rows_of(request: Request, rows, jobs: list, invariance=None, batches=None) -> Request:
    """`request` for the given rows only (indices into its rows, ascending) and `jobs`: each job keeps its
    per-request seeds of those rows, so a row gets exactly what the full request would ask for it.
    `batches`, (batch index, rows of the full request), become the sub-request's own batches, by the same index."""
    rows = list(rows)
    local = {row: k for k, row in enumerate(rows)}
    return dataclasses.replace(
        request, row_ids=[request.row_ids[i] for i in rows], prompts=[request.prompts[i] for i in rows],
        jobs=[dataclasses.replace(j, seeds=tuple(j.seeds[i] for i in rows) if j.seeds else ()) for j in jobs],
        use_tqdm=False, invariance=invariance,
        batches=None if batches is None else [(b, [local[r] for r in idx]) for b, idx in batches])


def merge(parts: list[tuple[list[int], ConfigDone]], n_rows: int) -> ConfigDone:
    """One config's shards, (rows of the full request, results), in row order. The replicas ran side by side:
    the call's wall time is the slowest shard's, its tokens the sum."""
    results: list = [None] * n_rows
    for rows, part in parts:
        for row, result in zip(rows, part.results):
            results[row] = result
    first = parts[0][1]
    return ConfigDone(config=first.config, results=results,
                      call_wall_s=max(p.call_wall_s for _, p in parts), call_configs=first.call_configs,
                      call_tokens=sum(p.call_tokens for _, p in parts), beam_impl=first.beam_impl,
                      call_note=first.call_note)


@dataclasses.dataclass
class _Shard:
    index: int
    rows: list[int]  # indices into the full request's rows, ascending
    batches: Optional[list[tuple[int, list[int]]]] = None  # (batch index, rows) where rows depend on their batch
    received: dict = dataclasses.field(default_factory=dict)  # config -> ConfigDone
    failures: int = 0
    actor: object = None
    ref: object = None
    done: bool = False


def plan_shards(n_rows: int, replicas: int, batches: Optional[list[list[int]]] = None) -> list[_Shard]:
    """Contiguous row ranges (shard_bounds) when each row's result is its own; with `batches` (row indices in
    run order), contiguous runs of whole batches, so no batch is split between replicas."""
    if batches is None:
        return [_Shard(i, list(range(lo, hi))) for i, (lo, hi) in enumerate(shard_bounds(n_rows, replicas))]
    return [_Shard(i, sorted(r for b in range(lo, hi) for r in batches[b]), [(b, batches[b]) for b in range(lo, hi)])
            for i, (lo, hi) in enumerate(shard_bounds(len(batches), replicas))]


def plan_request_shards(request: Request, replicas: int) -> list[_Shard]:
    """plan_shards over a sub-request's rows (a race's round): contiguous rows, or with `request.batches` contiguous
    runs of its whole batches, each keeping its batch index of the whole row list (its seed)."""
    units = None if request.batches is None else [idx for _, idx in request.batches]
    shards = plan_shards(len(request.row_ids), replicas, units)
    for shard in shards:
        if shard.batches is not None:  # plan_shards numbers the round's batches from 0
            shard.batches = [(request.batches[p][0], idx) for p, idx in shard.batches]
    return shards


def shard_place(shard: _Shard, n_shards: int, n_batches: int, rows: Optional[list[int]] = None) -> str:
    """Which replica and rows, for a log line or an error: `rows` are the shard's rows as indices of the whole
    test split where shard.rows index a sub-request (a race's round)."""
    if shard.batches is None:
        rows = rows or shard.rows
        return f"{shard.index + 1}/{n_shards} (test rows {rows[0] + 1}-{rows[-1] + 1})"
    first, last = shard.batches[0][0] + 1, shard.batches[-1][0] + 1
    span = f"batch {first}" if first == last else f"batches {first}-{last}"
    return f"{shard.index + 1}/{n_shards} ({span} of {n_batches}: {len(shard.rows)} test rows)"


def gather(shards: list[_Shard], request: Request, failed, finished, on_config, target: str) -> Iterator[Message]:
    """The shards' messages (each shard's actor answering `next` until None), until every shard is done: a config
    is handed over once every shard has delivered it, merged in row order, configs in `request`'s job order;
    other messages pass as they come. A failed call goes to failed(shard, exc) (it raises, or starts the shard
    again with a new ref), a shard that answers None to finished(shard); on_config(shard, config) on each
    delivery (tests kill an actor there)."""
    import ray
    from ray.exceptions import RayError

    order = [j.config for j in request.jobs]
    merged: set[str] = set()
    while True:
        live = {s.ref: s for s in shards if not s.done and s.ref is not None}
        if not live:
            break
        ready, _ = ray.wait(list(live), num_returns=1)
        shard = live[ready[0]]
        try:
            msg = ray.get(ready[0])
        except RayError as exc:
            failed(shard, exc)
            continue
        if msg is None:
            shard.done = True
            finished(shard)
            continue
        shard.ref = shard.actor.next.remote()
        if not isinstance(msg, ConfigDone):
            yield msg
            continue
        shard.received[msg.config] = msg
        if on_config is not None:
            on_config(shard, msg.config)
        for config in order:
            if config not in merged and all(config in s.received for s in shards):
                merged.add(config)
                yield merge([(s.rows, s.received[config]) for s in shards], len(request.row_ids))
    missing = [c for c in order if c not in merged]
    if missing:
        raise UserError(f"{target}: the replicas finished without configs {', '.join(missing)}")


def shard_invariance(check, shards: list[_Shard]) -> dict[int, InvarianceCheck]:
    """The batch-invariance check (sample rows of the full request) for the shard holding most of its rows
    (the first on a tie), on the rows it holds, as indices into that shard's rows; {} without a check."""
    if check is None:
        return {}
    held = [[r for r in check.rows if r in rows] for rows in (set(s.rows) for s in shards)]
    best = max(range(len(shards)), key=lambda i: (len(held[i]), -i))
    local = {row: k for k, row in enumerate(shards[best].rows)}
    return {best: InvarianceCheck(check.config, tuple(local[r] for r in held[best]))} if held[best] else {}


class ShardedBackend(Backend):
    """`inner`'s sweep on `replicas` Ray actors (see the module docstring)."""

    # Called as on_config(shard, config) when a shard delivers a config (tests kill an actor there).
    on_config = None

    def __init__(self, inner: Backend, target: str, replicas: int, retries: int, num_cpus: float,
                 num_gpus: float, shared: tuple[str, str], agreement_rows: int = 0):
        super().__init__(inner.on_cuda)
        self.inner = inner
        self.name, self.label, self.result_libraries = inner.name, inner.label, inner.result_libraries
        self.target, self.replicas, self.retries = target, replicas, retries
        self.num_cpus, self.num_gpus, self.shared = num_cpus, num_gpus, shared
        self.agreement_rows = agreement_rows
        self.started: list[str] = []  # actor names, in start order (tests kill one by name)

    # --- everything but `run` is the wrapped backend's: same inputs, so files stay current across backends
    def engine_settings(self, checkpoint: str, cfg: ExperimentConfig) -> dict:
        return self.inner.engine_settings(checkpoint, cfg)

    def identity(self, engine: dict, cfg: ExperimentConfig) -> dict:
        return self.inner.identity(engine, cfg)

    def job_params(self, dc: DecodingConfig, max_new_tokens: int, stop: list[str]):
        return self.inner.job_params(dc, max_new_tokens, stop)

    def request_seeds(self, run_seed: int, dc: DecodingConfig, row_ids: list[str]):
        return self.inner.request_seeds(run_seed, dc, row_ids)

    def seed_scheme(self, job_call: str, mode: str, run_seed: int) -> dict:
        return self.inner.seed_scheme(job_call, mode, run_seed)

    def shared_call_note(self, n_configs: int):
        return self.inner.shared_call_note(n_configs)

    def row_batches(self, request: Request):
        return self.inner.row_batches(request)

    def open(self, request: Request) -> "ShardedSession":
        """The wrapped backend's session on each of the replicas (generation.strategy race): ShardedSession."""
        return ShardedSession(self, request)

    # --- running
    def _start(self, ray, actor_cls, request: Request, shard: _Shard) -> None:
        jobs = [j for j in request.jobs if j.config not in shard.received]
        if not jobs:
            shard.done = True
            return
        sub = rows_of(request, shard.rows, jobs, self.invariance.get(shard.index), shard.batches)
        name = f"tunesweep-{self.target}-shard{shard.index}-try{shard.failures}-{os.getpid()}"
        shard.actor = actor_cls.options(name=name, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                        max_restarts=0).remote(self.inner, sub, self.shared,
                                                               f"{self.target} shard {self.where(shard)}")
        self.started.append(name)
        shard.ref = shard.actor.next.remote()
        log.info("%s: replica %s started for %d configs (actor %s)", self.target, self.where(shard), len(jobs), name)

    def where(self, shard: _Shard) -> str:
        return shard_place(shard, self.n_shards, self.n_batches)

    def run(self, request: Request) -> Iterator[Message]:
        import ray

        actor_cls = ray.remote(EngineReplica)
        batches = self.inner.row_batches(request)
        shards = plan_shards(len(request.row_ids), self.replicas, batches)
        self.n_shards, self.n_batches = len(shards), len(batches or [])
        if batches is not None and len(batches) < self.replicas:
            log.info("%s: %d %s batch(es) of up to %d rows: %d replica(s), not %d (a row's response depends on "
                     "its batch, so batches are not split)", self.target, len(batches), self.name,
                     request.batch_size, len(shards), self.replicas)
        # The batch-invariance sample indexes the full row list: the shard holding most of it runs it.
        self.invariance = shard_invariance(request.invariance, shards)
        results: dict[str, list] = {}  # config -> merged RowResults (for the agreement check)

        def failed(shard: _Shard, exc: Exception) -> None:
            if (err := user_error(exc)) is not None:
                raise err from None
            self._failed(ray, actor_cls, request, shard, exc)

        def finished(shard: _Shard) -> None:
            ray.kill(shard.actor)  # the engine process has exited; free the actor's CPUs and GPUs

        try:
            for shard in shards:
                self._start(ray, actor_cls, request, shard)
            for msg in gather(shards, request, failed, finished, self.on_config, self.target):
                if isinstance(msg, ConfigDone):
                    results[msg.config] = msg.results
                yield msg
            if self.agreement_rows and self.n_shards > 1:
                yield from self._agreement(ray, actor_cls, request, results, batches)
        finally:
            for shard in shards:
                if shard.actor is not None and not shard.done:
                    kill_actor(shard.actor)

    def _agreement(self, ray, actor_cls, request: Request, results: dict[str, list],
                   batches: Optional[list[list[int]]]) -> Iterator[Message]:
        """Every config of the request regenerated by one engine for the check sample; one AgreementDone.
        The responses are written already: a check that fails is a warning, not a failed stage. Where rows
        depend on their batch, the sample is whole batches (about agreement_rows rows), each with its index."""
        from ray.exceptions import RayError

        if batches is None:
            sample = check_sample(len(request.row_ids), self.agreement_rows)
            sub = rows_of(request, sample, request.jobs)
        else:
            picked = check_sample(len(batches), -(-self.agreement_rows // max(map(len, batches))))
            sample = sorted(r for b in picked for r in batches[b])
            sub = rows_of(request, sample, request.jobs, batches=[(b, batches[b]) for b in picked])
        name = f"tunesweep-{self.target}-agreement-{os.getpid()}"
        log.info("%s: agreement check: %d configs x %d rows (spread over the %d shards) on one engine", self.target,
                 len(sub.jobs), len(sample), self.n_shards)
        start = time.perf_counter()
        actor = actor_cls.options(name=name, num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0).remote(
            self.inner, sub, self.shared, f"{self.target} agreement check")
        self.started.append(name)
        single: dict[str, list] = {}
        try:
            while (msg := ray.get(actor.next.remote())) is not None:
                if isinstance(msg, ConfigDone):
                    single[msg.config] = msg.results
                elif isinstance(msg, EngineBuilt):
                    yield msg
        except RayError as exc:
            log.warning("%s: the agreement check failed (%s); the responses are written, replica_agreement is not "
                        "recorded", self.target, first_line(exc))
            return
        finally:
            kill_actor(actor)
        identical, differs = {}, {}
        for config, rows in single.items():
            # A row is the same when its text, finish reason and token count are.
            identical[config], differ = identical_fraction([dataclasses.astuple(r) for r in rows],
                                                           [dataclasses.astuple(results[config][i]) for i in sample])
            differs[config] = [sub.row_ids[k] for k in differ]
        yield AgreementDone(self.n_shards, [request.row_ids[i] for i in sample], identical, differs,
                            time.perf_counter() - start)

    def _failed(self, ray, actor_cls, request: Request, shard: _Shard, exc: Exception) -> None:
        shard.failures += 1
        first = retry_or_fail(shard.actor, exc, shard.failures, self.retries,
                              f"{self.target}: generation replica {self.where(shard)}",
                              "a rerun generates only the configs still missing")
        log.warning("%s: replica %s failed (%s); starting it again for its %d undelivered configs (retry %d of %d)",
                    self.target, self.where(shard), first, len(request.jobs) - len(shard.received),
                    shard.failures, self.retries)
        self._start(ray, actor_cls, request, shard)


class ShardedSession(Session):
    """A race on Ray: the wrapped backend's Session opened in each of R replica actors (vLLM: the engine child
    lives under its actor, as in a full sweep), kept for every round. `run(sub)` splits the round's rows among
    the replicas as a full sweep shards its rows (plan_shards over the round: contiguous rows; for transformers
    contiguous runs of the round's whole batches, each with its index of the whole row list, so every row keeps
    its full-sweep companions, padding and seed) and yields each config once every shard has delivered it,
    merged in the round's row order, in the round's job order.

    An actor that dies (or whose model fails) is started again, its session loaded again, and its shard of the
    round rerun for the configs it has not delivered; retries count per replica over the whole race (its work,
    as a shard's work is the whole sweep), up to execution.retries, then one line naming the model and the
    shard. A UserError from the backend is not retried."""

    def __init__(self, backend: ShardedBackend, request: Request):
        import ray

        self.backend, self.request, self.target = backend, request, backend.target
        self.actor_cls = ray.remote(EngineReplica)
        batches = backend.inner.row_batches(request)
        self.n_batches = len(batches or [])
        # No more replicas than a round could ever use (the rows, or the batches that are not split).
        self.replicas = max(1, min(backend.replicas, len(batches) if batches is not None else len(request.row_ids)))
        self.index = {rid: i for i, rid in enumerate(request.row_ids)}
        self.actors: list = [None] * self.replicas
        self.failures = [0] * self.replicas
        try:
            for k in range(self.replicas):
                self._start(k)
            self.build_s = max(self._open_all())
        except BaseException:
            self.close(graceful=False)  # nothing loaded to shut down cleanly: do not wait for loads in flight
            raise
        log.info("%s: %d replica session(s) loaded, kept for every round", self.target, self.replicas)

    @property
    def builds(self) -> int:
        # Every replica loads once, and again after each restart (its session reopens on its next request).
        return self.replicas + sum(self.failures)

    def _start(self, k: int) -> None:
        name = f"tunesweep-{self.target}-race{k}-try{self.failures[k]}-{os.getpid()}"
        b = self.backend
        self.actors[k] = self.actor_cls.options(name=name, num_cpus=b.num_cpus, num_gpus=b.num_gpus,
                                                max_restarts=0).remote(b.inner, self.request, b.shared,
                                                                       f"{self.target} race replica {k + 1}")
        b.started.append(name)

    def _open_all(self) -> list[float]:
        """Every replica's session loaded side by side (a failed load retried like a failed round); build times."""
        import ray

        builds = [0.0] * self.replicas
        pending = {self.actors[k].open.remote(): k for k in range(self.replicas)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                builds[k] = ray.get(ready[0])
            except Exception as exc:
                self._failed(k, exc, f"{k + 1}/{self.replicas} (loading the model)")
                pending[self.actors[k].open.remote()] = k
        return builds

    def _failed(self, k: int, exc: Exception, where: str) -> None:
        """Count a failure of replica k: a UserError and too many failures end the race in one line, else the
        actor is started again (its session loads on its next request)."""
        if (err := user_error(exc)) is not None:
            raise err from None
        self.failures[k] += 1
        first = retry_or_fail(self.actors[k], exc, self.failures[k], self.backend.retries,
                              f"{self.target}: race replica {where}", "a rerun resumes the race after its last "
                              "finished round")
        log.warning("%s: race replica %s failed (%s); starting it again (retry %d of %d)", self.target, where, first,
                    self.failures[k], self.backend.retries)
        self._start(k)

    def _begin(self, request: Request, shard: _Shard) -> None:
        jobs = [j for j in request.jobs if j.config not in shard.received]
        shard.actor = self.actors[shard.index]
        shard.ref = shard.actor.begin.remote(rows_of(request, shard.rows, jobs, batches=shard.batches))

    def run(self, request: Request) -> Iterator[Message]:
        shards = plan_request_shards(request, self.replicas)

        def where(shard: _Shard) -> str:
            return shard_place(shard, len(shards), self.n_batches,
                               [self.index[request.row_ids[r]] for r in shard.rows])

        def failed(shard: _Shard, exc: Exception) -> None:
            self._failed(shard.index, exc, where(shard))
            self._begin(request, shard)

        for shard in shards:
            self._begin(request, shard)
        # A finished shard's actor keeps its session for the next round; a session sends only ConfigDones.
        yield from gather(shards, request, failed, lambda shard: None, self.backend.on_config, self.target)

    def close(self, graceful: bool = True) -> None:
        """Close every replica's session (a vLLM engine shuts down in its actor), then kill the actors (the
        engine child of a killed actor dies with it)."""
        import ray

        live = [a for a in self.actors if a is not None]
        if graceful and live:
            try:
                ray.wait([a.close.remote() for a in live], num_returns=len(live), timeout=120)
            except Exception:
                pass
        for actor in live:
            kill_actor(actor)
        self.actors = [None] * self.replicas
