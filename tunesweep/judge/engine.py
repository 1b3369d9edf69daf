"""The judge engine: loaded ONCE for the whole study, then asked for the two labels' log-probabilities of
every config's prompts in turn (verdict.Scorer).

- hf: in this process (transformers frees its memory on `del`), verdict.hf_scorer.
- vllm: `vllm.LLM` in a spawned child process, as generation's engine lives (tunesweep.generate.vllm): on
  CUDA, `del llm` does not free GPU memory, and the engine's own processes (EngineCore, workers) must end
  with the stage even when it is SIGKILLed, so the child leads a process group that a watchdog kills when
  this process or the child ends (isolation._die_with_parent(group=True)). The parent sends one request
  per config and waits for its answer, so it writes each config's verdicts as they come: a killed stage
  loses at most the config in flight.
- execution.backend ray: the same engine (either backend) inside a Ray actor, placed like a generation
  replica (tunesweep.cluster).

Every engine counts its loads; the stage records the count in the log and in the judge manifest.
"""

from __future__ import annotations

import os
import queue as queue_mod
import time
import traceback
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UserError
from ..isolation import _die_with_parent
from .prompt import Labels

POLL_S = 5.0  # how long the parent waits for the child before checking that it is still alive


@dataclass(frozen=True)
class EngineSpec:
    """What to load: picklable (it crosses into the child process or the Ray actor)."""

    backend: str  # vllm | hf
    checkpoint: str  # a local folder (a hub id is resolved to its snapshot folder before)
    vllm_kwargs: dict = field(default_factory=dict)  # vllm.LLM(**vllm_kwargs)
    hf_batch_size: int = 16


class LoadedEngine:
    """The judge model itself, in whichever process holds it: `score(prompts, labels)` and `close()`."""

    def __init__(self, spec: EngineSpec):
        from .verdict import hf_scorer, vllm_scorer

        t0 = time.perf_counter()
        self._llm = None
        if spec.backend == "vllm":
            from vllm import LLM

            from ..hub import local_folder

            folder = local_folder(spec.checkpoint)  # a pinned snapshot: the same commit on this machine
            self._llm = LLM(**{**spec.vllm_kwargs, "model": folder, "tokenizer": folder})
            self._score = vllm_scorer(self._llm)
        elif spec.backend == "hf":
            from ..loading import load_for_inference

            model, _ = load_for_inference(spec.checkpoint)
            self._score = hf_scorer(model, spec.hf_batch_size)
        else:
            raise ValueError(f"unknown judge backend {spec.backend!r}")
        self.build_s = time.perf_counter() - t0

    def score(self, prompts: Sequence[Sequence[int]], labels: Labels) -> list:
        return [tuple(x) for x in self._score(prompts, labels)]

    def close(self) -> None:
        if self._llm is not None:
            try:
                self._llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the process ends right after
                pass
            self._llm = None


# --- vLLM in a child process ------------------------------------------------------------------------

def _serve(spec: EngineSpec, parent_pid: int, requests, replies) -> None:
    """The child: build the engine, answer score requests until a None arrives."""
    _die_with_parent(parent_pid, group=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    engine = None
    try:
        engine = LoadedEngine(spec)
        replies.put(("built", engine.build_s))
        while (job := requests.get()) is not None:
            replies.put(("ok", engine.score(*job)))
    except UserError as exc:
        replies.put(("user_error", str(exc)))
    except BaseException as exc:  # everything reaches the parent, which raises it there
        replies.put(("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if engine is not None:
            engine.close()


class ChildEngine:
    """A LoadedEngine in a spawned child process (the parent side)."""

    def __init__(self, spec: EngineSpec):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._requests, self._replies = ctx.Queue(), ctx.Queue()
        # Not a daemon: vLLM's engine core starts processes of its own, which daemons may not do.
        self._proc = ctx.Process(target=_serve, args=(spec, os.getpid(), self._requests, self._replies),
                                 name="tunesweep-judge-engine")
        self._proc.start()
        try:
            self.build_s = self._receive("built")
        except BaseException:
            self.close()
            raise

    def _receive(self, expected: str):
        while True:
            try:
                kind, value = self._replies.get(timeout=POLL_S)
            except queue_mod.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"the judge engine process exited with code {self._proc.exitcode} before "
                                       "answering (out of memory? see the log above)") from None
                continue
            if kind == expected:
                return value
            if kind == "user_error":
                raise UserError(value)
            raise RuntimeError(f"the judge engine failed: {value}")

    def score(self, prompts: Sequence[Sequence[int]], labels: Labels) -> list:
        self._requests.put(([list(p) for p in prompts], labels))
        return self._receive("ok")

    def close(self) -> None:
        if self._proc.is_alive():
            self._requests.put(None)
            self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=30)
        self._requests.close()
        self._replies.close()


# --- Ray ---------------------------------------------------------------------------------------------

class _ActorEngine:
    """The judge engine as a Ray actor (a generation replica's place on the cluster: execution.cpus, engine_gpus,
    retries); the actor process ends when the stage kills it."""

    def __init__(self, spec: EngineSpec, shared: tuple[str, str]):
        from ..cluster import check_shared

        # The judge checkpoint is a folder of the workdir's machine (or a pinned hub snapshot): the node must see it.
        check_shared(*shared, "the judge engine")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self._engine = LoadedEngine(spec)

    def build_s(self) -> float:
        return self._engine.build_s

    def score(self, prompts, labels) -> list:
        return self._engine.score(prompts, labels)


class RayEngine:
    """The parent side of the actor (execution.backend ray)."""

    def __init__(self, spec: EngineSpec, cfg, on_cuda: bool):
        from ..cluster import join

        ex = cfg.execution
        gpus = ex.engine_gpus if ex.engine_gpus is not None else (
            float(cfg.evaluation.judge.engine.tensor_parallel_size) if on_cuda else 0.0)
        ray, shared = join(cfg, "engine_gpus", gpus, "judge engine")
        self._ray = ray
        # A dead actor is started again (and the request in flight asked again) up to execution.retries times.
        self._actor = ray.remote(_ActorEngine).options(
            name=f"tunesweep-judge-{os.getpid()}", num_cpus=ex.cpus, num_gpus=gpus, max_restarts=ex.retries,
            max_task_retries=ex.retries).remote(spec, shared)
        self.build_s = self._get(self._actor.build_s.remote())

    def _get(self, ref):
        from ray.exceptions import RayError

        from ..cluster import first_line, user_error

        try:
            return self._ray.get(ref)
        except RayError as exc:
            if (err := user_error(exc)) is not None:
                raise err from None
            raise UserError(f"the judge engine actor failed: {first_line(exc)}") from None

    def score(self, prompts, labels) -> list:
        return self._get(self._actor.score.remote([list(p) for p in prompts], labels))

    def close(self) -> None:
        from ..cluster import kill_actor

        kill_actor(self._actor)


def start_engine(spec: EngineSpec, cfg=None, on_cuda: bool = False, ray: bool = False):
    """The engine for the whole stage: a Ray actor, a child process (vllm) or this process (hf)."""
    if ray:
        return RayEngine(spec, cfg, on_cuda)
    if spec.backend == "vllm":
        return ChildEngine(spec)
    return LoadedEngine(spec)


def engine_settings(backend: str, checkpoint: str, judge_cfg, seed: int, on_cuda: bool) -> dict:
    """What the engine is loaded with (recorded in the manifest)."""
    if backend == "vllm":
        from ..loading import engine_kwargs

        return engine_kwargs(checkpoint, judge_cfg.engine, seed, on_cuda)
    return {"hf_batch_size": judge_cfg.hf_batch_size}


def numeric_identity(backend: str, settings: dict, on_cuda: bool) -> dict:
    """What changes the judge's numbers besides its checkpoint: the backend and its precision (part of every
    judgment's key); hf's batch size pads prompts together, which moves log-probabilities in the last digits."""
    if backend == "vllm":
        return {"backend": "vllm", "dtype": settings.get("dtype"), "quantization": settings.get("quantization")}
    return {"backend": "hf", "dtype": "auto-bf16" if on_cuda else "float32",
            "hf_batch_size": settings.get("hf_batch_size")}
