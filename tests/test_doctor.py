"""`tunesweep doctor` and the `auto` backend choice, on every combination of what a machine can have,
and on the machine that runs the tests (CPU or CUDA)."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_tunesweep
from tunesweep import backends


@pytest.fixture
def machine(monkeypatch):
    """Pretend a machine: set(cuda=..., importable={name: (ok, why)})."""
    def set_(cuda: bool, importable: dict):
        monkeypatch.setattr(backends, "cuda_visible", lambda: cuda)
        monkeypatch.setattr(backends, "try_import", lambda name: importable[name])
    return set_


def test_train_auto_is_unsloth_only_with_cuda_and_an_importable_unsloth(machine):
    machine(cuda=True, importable={"unsloth": (True, "unsloth imports")})
    assert backends.pick_train_backend("auto") == ("unsloth", "CUDA is visible and unsloth imports")
    machine(cuda=True, importable={"unsloth": (False, "unsloth is not installed")})
    assert backends.pick_train_backend("auto") == ("peft", "unsloth is not installed")
    machine(cuda=False, importable={"unsloth": (True, "unsloth imports")})
    assert backends.pick_train_backend("auto") == ("peft", "no CUDA device visible, so unsloth cannot run")


def test_generate_auto_is_vllm_when_it_imports(machine):
    machine(cuda=False, importable={"vllm": (True, "vllm imports")})
    assert backends.pick_generation_backend("auto") == ("vllm", "vllm imports")
    machine(cuda=False, importable={"vllm": (False, "`import vllm` failed: ImportError: x")})
    assert backends.pick_generation_backend("auto") == ("hf", "`import vllm` failed: ImportError: x")


def test_explicit_backend_is_kept(machine):
    machine(cuda=False, importable={})  # nothing is probed when the user names the backend
    assert backends.pick_train_backend("unsloth") == ("unsloth", "asked for unsloth")
    assert backends.pick_generation_backend("hf") == ("hf", "asked for hf")


def test_try_import_reports_a_failing_import_without_raising(tmp_path, monkeypatch):
    (tmp_path / "broken_mod_for_test.py").write_text("raise NotImplementedError('no accelerator here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ok, why = backends.try_import.__wrapped__("broken_mod_for_test")
    assert not ok and why == "`import broken_mod_for_test` failed: NotImplementedError: no accelerator here"
    assert backends.try_import.__wrapped__("surely_not_installed_pkg") == (False, "surely_not_installed_pkg is not installed")


def test_doctor_prints_versions_and_what_auto_picks_here(machine):
    from tunesweep.doctor import doctor_report
    from tunesweep.provenance import package_version

    machine(cuda=False, importable={"unsloth": (False, "unsloth is not installed"), "vllm": (True, "vllm imports")})
    lines = doctor_report().splitlines()
    assert f"transformers  {package_version('transformers')}" in lines
    assert "unsloth       " + (package_version("unsloth") or "not installed") in lines
    assert "CUDA          not visible" in lines
    assert lines[-2:] == ["train   auto -> peft (no CUDA device visible, so unsloth cannot run)",
                          "generate auto -> vllm (vllm imports)"]


def imports_in_a_fresh_process(module: str) -> bool:
    """Independent of tunesweep's own probe: does `import module` succeed in a clean interpreter?"""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_doctor_command_follows_the_documented_rule_on_this_machine():
    r = run_tunesweep("doctor")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("python")
    [cuda_line] = [line for line in lines if line.startswith("CUDA")]
    [train_line] = [line for line in lines if line.startswith("train   auto -> ")]
    [gen_line] = [line for line in lines if line.startswith("generate auto -> ")]
    # unsloth when CUDA is visible and unsloth imports, else peft; vllm when it imports, else hf.
    if "not visible" in cuda_line:
        assert train_line.startswith("train   auto -> peft (no CUDA device visible")
    elif imports_in_a_fresh_process("unsloth"):
        assert train_line.startswith("train   auto -> unsloth (CUDA is visible and unsloth imports")
    else:
        assert train_line.startswith("train   auto -> peft (") and "unsloth" in train_line
    expected_gen = "vllm" if imports_in_a_fresh_process("vllm") else "hf"
    assert gen_line.startswith(f"generate auto -> {expected_gen} (")


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_unsloth_is_probed_in_another_process_and_never_imported_here(tmp_path, monkeypatch):
    stand_in = Path(__file__).resolve().parent / "unsloth_stand_in"  # patches transformers when imported
    monkeypatch.syspath_prepend(str(stand_in))
    monkeypatch.setenv("PYTHONPATH", str(stand_in))
    monkeypatch.setattr(backends, "PROBE_CACHE", tmp_path / "probes.json")
    assert backends.try_import.__wrapped__("unsloth") == (True, "unsloth imports (checked in a separate process)")
    assert "unsloth" not in sys.modules
    assert "unsloth" in (tmp_path / "probes.json").read_text()  # the next run reads the answer
