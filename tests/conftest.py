"""Shared fixtures. Expensive things (tiny models, vLLM engines, a scored study) are built once per session.

Everything runs offline: no test may reach a model or dataset hub, and nothing outside the checkout
is read (the real Alpaca records are tests/data/alpaca_sample.json).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import STUDY_ROWS, Study, study_yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
ALPACA_SAMPLE = REPO / "tests" / "data" / "alpaca_sample.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def alpaca_demo_path() -> Path:
    """400 real Alpaca records shipped with the tests (tests/data/README.md: source and licence)."""
    return ALPACA_SAMPLE


# --- built once per test run, also when pytest-xdist runs the suite in several workers -------------------

def built_once(tmp_path_factory, worker_id: str, name: str, build, dump=lambda v: v, load=lambda v: v):
    """`build()` once for the whole run. Under pytest-xdist (`make test` runs two workers) each worker has
    its own session, so the first worker to ask builds it under a file lock in the run's shared temporary
    folder and writes what it built there as JSON; the others wait for the lock and read it. The built files
    are read-only for the tests (a test that changes files works on a copy), so workers can share them."""
    if worker_id == "master":
        return build()
    from filelock import FileLock

    record = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(str(record) + ".lock"):
        if record.is_file():
            return load(json.loads(record.read_text()))
        value = build()
        record.write_text(json.dumps(dump(value)))
        return value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, worker_id) -> Path:
    """A tiny random Llama (tokenizer trained on builtin:tasks), shared by every test."""
    from tunesweep.tinymodel import make_tiny_model

    return built_once(tmp_path_factory, worker_id, "tiny_model_dir",
                      lambda: make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0), str, Path)


@pytest.fixture(scope="session")
def tiny_alpaca_model_dir(tmp_path_factory, alpaca_demo_path) -> Path:
    """A tiny random Llama whose tokenizer is trained on the real Alpaca records."""
    from tunesweep.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-alpaca") / "tiny-llama", data=str(alpaca_demo_path), seed=0)


# --- one study, produced by the real stages --------------------------------------------------------

@pytest.fixture(scope="session")
def study(tmp_path_factory, worker_id, tiny_model_dir) -> Study:
    """split -> generate -> clean -> score on a tiny study, by the stages themselves.

    Target `tiny` is the tiny random model standing in for a fine-tuned checkpoint (training has tests
    of its own), generated with vLLM (one engine); `tiny-base` is the same weights as a base row,
    generated with the hf backend, so the two backends can be compared row by row. (`generate --model
    tiny` would take its base rows along, with one backend: the two targets are planned and run one by
    one here, through the stage's own plan_target / run_target.)
    Read-only for the tests: a test that changes files works on `study.copy_to(tmp_path)`.
    """
    return built_once(tmp_path_factory, worker_id, "study", lambda: build_study(tmp_path_factory, tiny_model_dir),
                      lambda s: [str(s.root), str(s.config), s.summaries],
                      lambda v: Study(Path(v[0]), Path(v[1]), v[2]))


def build_study(tmp_path_factory, tiny_model_dir) -> Study:
    from tunesweep.config import load_config
    from tunesweep.data import split_for_config
    from tunesweep.clean.stage import clean
    from tunesweep.evaluate.scoring import score
    from tunesweep.generate.stage import plan_target, run_target
    from tunesweep.layout import load_split

    root = tmp_path_factory.mktemp("study")
    workdir = root / "work"
    config = root / "study.yaml"
    config.write_text(study_yaml(workdir, tiny_model_dir))
    cfg = load_config(config)
    split_for_config(cfg)
    shutil.copytree(tiny_model_dir, workdir / "finetuned_models" / "tiny")
    rows = load_split(workdir, "test")[:STUDY_ROWS]
    summaries = {}
    for target, backend in zip(cfg.run_targets(), ("vllm", "hf")):
        summaries[target.name] = run_target(cfg, plan_target(cfg, target, backend, rows, STUDY_ROWS))
    clean(cfg)
    score(cfg)
    return Study(workdir, config, summaries)


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, worker_id, tiny_model_dir):
    """The whole pipeline (hyperparameter_experiments.sh) once, uninterrupted, with base rows, on a small
    slice of a tiny study: (workdir, config path, CompletedProcess). Shared by test_pipeline.py and
    test_report_html.py, so the browser tests read a real run's files without another vLLM run."""
    return built_once(tmp_path_factory, worker_id, "e2e_run", lambda: run_e2e(tmp_path_factory, tiny_model_dir),
                      lambda r: [str(r[0]), str(r[1]), r[2].args, r[2].returncode, r[2].stdout, r[2].stderr],
                      lambda v: (Path(v[0]), Path(v[1]), subprocess.CompletedProcess(*v[2:])))


def run_e2e(tmp_path_factory, tiny_model_dir):
    from helpers import make_study, pipeline_cmd, pipeline_env

    root = tmp_path_factory.mktemp("pipe-a")
    cfg = make_study(root, tiny_model_dir, evaluate_base=True)
    res = subprocess.run(pipeline_cmd(cfg), cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return root / "work", cfg, res


# --- tiers: `make test-fast` (-m "not slow") and the slow tail of `make test` --------------------------

# Fixtures that start a vLLM engine, train, run the pipeline or start Ray: a test that needs one, even
# through another fixture, is slow, so the fast tier never builds them.
SLOW_FIXTURES = {"study", "e2e_run", "ray_local", "alpaca_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker (`make test`: two workers, one module at a time each, in this order): the modules
        # with the most slow tests first, so the long ones overlap instead of one of them ending the run alone.
        slow = {}
        for item in items:
            slow[item.module.__name__] = slow.get(item.module.__name__, 0) + (item.get_closest_marker("slow") is not None)
        items.sort(key=lambda item: -slow[item.module.__name__])
        return
    # Slow tests last (a stable sort keeps each module's order): a broken unit test shows in the first
    # minutes of `make test`, before the engines and pipelines run.
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
