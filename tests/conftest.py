"""Shared fixtures. Expensive things (tiny models, vLLM engines) are built once per session.

Everything runs offline: no test may reach a model or dataset hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
SHARED_DEMO = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def alpaca_demo_path() -> Path:
    """999 real Alpaca records from ../shared (not copied into the project)."""
    if not SHARED_DEMO.is_file():
        pytest.skip(f"{SHARED_DEMO} not found (../shared must sit beside the checkout)")
    return SHARED_DEMO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (tokenizer trained on builtin:tasks), shared by every test."""
    from tunesweep.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_alpaca_model_dir(tmp_path_factory, alpaca_demo_path) -> Path:
    """A tiny random Llama whose tokenizer is trained on the real Alpaca demo records."""
    from tunesweep.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-alpaca") / "tiny-llama", data=str(alpaca_demo_path), seed=0)



@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, tiny_model_dir):
    """The whole pipeline (hyperparameter_experiments.sh) once, uninterrupted, with base rows, on a small
    slice of a tiny study: (workdir, config path, CompletedProcess). Shared by test_pipeline.py and
    test_report_html.py, so the browser tests read a real run's files without another vLLM run."""
    import subprocess

    from helpers import make_study, pipeline_cmd, pipeline_env

    root = tmp_path_factory.mktemp("pipe-a")
    cfg = make_study(root, tiny_model_dir, evaluate_base=True)
    res = subprocess.run(pipeline_cmd(cfg), cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return root / "work", cfg, res
