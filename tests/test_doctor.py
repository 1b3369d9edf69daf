"""`tunesweep doctor` and the `auto` backend choice, on every combination of what a machine can have."""

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


def test_doctor_command_runs():
    r = run_tunesweep("doctor")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("python") and "train   auto -> " in r.stdout
