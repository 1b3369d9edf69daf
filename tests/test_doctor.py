"""`tunesweep doctor` and the `auto` backend choice, on whatever machine runs the tests (CPU or CUDA)."""

import subprocess
import sys

from helpers import run_tunesweep
from tunesweep.backends import pick_generation_backend, pick_train_backend


def imports_in_a_fresh_process(module: str) -> bool:
    """Independent of tunesweep's own probe: does `import module` succeed in a clean interpreter?"""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def test_doctor_reports_versions_and_the_documented_auto_rule():
    r = run_tunesweep("doctor")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in ("python", "torch", "transformers", "vllm", "unsloth", "trl", "peft"):
        assert any(line.startswith(name) for line in lines), name
    [cuda_line] = [line for line in lines if line.startswith("CUDA")]
    [train_line] = [line for line in lines if line.startswith("train   auto -> ")]
    [gen_line] = [line for line in lines if line.startswith("generate auto -> ")]
    # The rule the README documents: unsloth when CUDA is visible and unsloth imports, else peft;
    # vllm when it imports, else hf.
    if "not visible" in cuda_line:
        assert train_line.startswith("train   auto -> peft (no CUDA device visible")
    elif imports_in_a_fresh_process("unsloth"):
        assert train_line.startswith("train   auto -> unsloth (CUDA is visible and unsloth imports")
    else:
        assert train_line.startswith("train   auto -> peft (") and "unsloth" in train_line
    expected_gen = "vllm" if imports_in_a_fresh_process("vllm") else "hf"
    assert gen_line.startswith(f"generate auto -> {expected_gen} (")


def test_explicit_backend_is_kept():
    assert pick_train_backend("unsloth") == ("unsloth", "asked for unsloth")
    assert pick_generation_backend("hf") == ("hf", "asked for hf")
