"""Hub ids pinned to a commit (tunesweep.hub): a hub model base and a hub dataset resolve, through the real
huggingface_hub, to a snapshot folder of the cache; `<repo>@<commit>` is their recorded identity, so upstream
moving `main` makes the dependent stages stale, `revision: <commit>` pins one, and what cannot be resolved
offline is one line naming the config key.

The hub cache is a fake one in tmp, laid out as huggingface_hub lays out its own (`models--acme--tiny/refs/main`
holding a commit, `snapshots/<commit>/` holding the files), used offline (HF_HUB_OFFLINE=1, conftest).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import run_tunesweep
from tunesweep.config import load_config, parse_config
from tunesweep.errors import UserError

C1, C2 = "1" * 40, "2" * 40
ALPACA = Path(__file__).resolve().parent / "data" / "alpaca_sample.json"


def snapshot(cache: Path, kind: str, repo: str, commit: str, main: bool = True) -> Path:
    """The snapshot folder of `repo` at `commit` (created empty); `main`: refs/main now names `commit`."""
    folder = cache / f"{kind}s--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    if main:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)  # as huggingface_hub writes it: no newline
    return snap


def hub_env(root: Path) -> dict:
    return {"HF_HOME": str(root), "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


MODEL_CONFIG = """\
name: hub
workdir: {workdir}
dataset: {{source: "builtin:tasks", builtin_rows: 40, test_size: 3}}
models:
  - name: tiny
    base: acme/tiny
{revision}    lora: null
    evaluate_base: true
generation:
  backend: hf
  max_new_tokens: 4
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.0}}
"""


def model_config(tmp_path: Path, revision: str = "") -> Path:
    path = tmp_path / f"hub{revision[:4]}.yaml"
    path.write_text(MODEL_CONFIG.format(workdir=tmp_path / "work",
                                        revision=f"    revision: {revision!r}\n" if revision else ""))
    return path


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_hub_base_is_pinned_to_its_commit_and_moving_main_makes_generate_stale(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    """Base-target generation loads the snapshot folder and records `acme/tiny@<commit of main>`; refs/main
    moved to a snapshot with other weights: the generation (and the fine-tune's inputs) are stale;
    `revision: <first commit>` pins the first snapshot again, which is still current."""
    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    from tunesweep.data import split_for_config
    from tunesweep.generate.stage import generate, plan_target
    from tunesweep.layout import load_split
    from tunesweep.train.resume import training_inputs

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # where this process's hub cache lives
    first = snapshot(cache, "model", "acme/tiny", C1)
    shutil.copytree(tiny_model_dir, first, dirs_exist_ok=True)

    cfg = load_config(model_config(tmp_path))
    split_for_config(cfg)
    [summary] = generate(cfg, model="tiny-base", backend="hf", limit=2)
    assert len(summary["generated"]) == 1
    manifest = json.loads((tmp_path / "work" / "llm_responses" / "tiny-base" / "manifest.json").read_text())
    assert manifest["checkpoint_identity"] == f"acme/tiny@{C1}" and manifest["checkpoint"] == str(first)
    m = cfg.models[0]
    trained_from = training_inputs(cfg, m, "peft", m.train.model_dump(), "data")["base"]
    assert trained_from["checkpoint"] == f"acme/tiny@{C1}"

    # Upstream moves main to a commit with other weights.
    second = snapshot(cache, "model", "acme/tiny", C2)
    shutil.copytree(tiny_model_dir, second, dirs_exist_ok=True)
    weights = load_file(second / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    (second / "model.safetensors").unlink()
    save_file(weights, second / "model.safetensors", metadata={"format": "pt"})

    rows = load_split(tmp_path / "work", "test")[:2]
    moved = load_config(model_config(tmp_path))
    target = moved.run_targets("tiny-base")[0]
    plan = plan_target(moved, target, "hf", rows, 2)
    assert plan.checkpoint == str(second) and plan.checkpoint_id["checkpoint"] == f"acme/tiny@{C2}"
    assert plan.pending == plan.jobs  # regenerated: the base changed upstream
    m2 = moved.models[0]
    assert training_inputs(moved, m2, "peft", m2.train.model_dump(), "data")["base"] != trained_from  # retrained

    pinned = load_config(model_config(tmp_path, revision=C1))
    plan = plan_target(pinned, pinned.run_targets("tiny-base")[0], "hf", rows, 2)
    assert plan.checkpoint == str(first) and plan.pending == []  # the first snapshot, still current
    m3 = pinned.models[0]
    assert training_inputs(pinned, m3, "peft", m3.train.model_dump(), "data")["base"] == trained_from


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_hub_dataset_split_records_the_commit_and_follows_main(tmp_path):
    """split.json records `acme/alpaca@<commit>`; a rerun is current until main moves to other data;
    `revision: <first commit>` gives the first split back, byte for byte."""
    records = json.loads(ALPACA.read_text())
    cache = tmp_path / "hub"
    (snapshot(cache, "dataset", "acme/alpaca", C1) / "data.json").write_text(json.dumps(records[:30]))
    env = hub_env(tmp_path)
    work = tmp_path / "work" / "alpaca_data"

    def split(revision: str = ""):
        cfg = tmp_path / "c.yaml"
        rev = f", revision: {revision!r}" if revision else ""
        cfg.write_text(f"name: t\nworkdir: {tmp_path / 'work'}\ndataset: {{source: acme/alpaca, test_size: 5{rev}}}\n"
                       "models:\n  - {name: m, base: x}\n")
        r = run_tunesweep("split", "--config", cfg, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout, json.loads((work / "split.json").read_text())

    out, meta = split()
    assert meta["source_hash"] == f"acme/alpaca@{C1}" and meta["source_commit"] == C1 and meta["usable"] == 30
    first_train = (work / "train.jsonl").read_bytes()
    out, _ = split()
    assert "already current" in out

    (snapshot(cache, "dataset", "acme/alpaca", C2) / "data.json").write_text(json.dumps(records[30:50]))
    out, meta = split()
    assert "already current" not in out
    assert meta["source_hash"] == f"acme/alpaca@{C2}" and meta["usable"] == 20

    out, meta = split(revision=C1)
    assert meta["source_hash"] == f"acme/alpaca@{C1}" and meta["revision"] == C1
    assert (work / "train.jsonl").read_bytes() == first_train


@pytest.mark.parametrize("command,config,key", [
    ("generate", "models:\n  - {name: tiny, base: acme/tiny, revision: v9, lora: null, evaluate_base: true}\n",
     "models.tiny.base = 'acme/tiny' (revision 'v9')"),
    ("split", "dataset: {source: acme/unknown, test_size: 5}\nmodels:\n  - {name: m, base: x}\n",
     "dataset.source = 'acme/unknown' (revision 'main')"),
])
def test_unresolvable_hub_id_is_one_line_naming_the_key(tmp_path, command, config, key):
    snapshot(tmp_path / "hub", "model", "acme/tiny", C1)  # main is cached; v9 is not
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nworkdir: {tmp_path / 'work'}\n{config}")
    args = ["--model", "tiny-base", "--backend", "hf"] if command == "generate" else []
    r = run_tunesweep(command, "--config", cfg, *args, env=hub_env(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"tunesweep: error: {key}: cannot resolve it on the hub") and "HF_HUB_OFFLINE" in lines[0]
    assert "run once online" in lines[0] and "local" in lines[0]


@pytest.mark.parametrize("section,message", [
    ("dataset: {source: builtin:tasks, revision: main}\nmodels: [{name: m, base: acme/tiny}]",
     "dataset.revision = 'main': applies to a hub id only"),
    ("models: [{name: m, base: ./local/model, revision: main}]", "models[0].revision = 'main': applies to a hub id only"),
    ("models: [{name: m, base: acme/tiny, revision: ''}]", "models[0].revision = '': must be a branch, tag or commit"),
    ("models: [{name: m, base: acme/tiny, revision: 3}]", "models[0].revision = 3:"),
])
def test_revision_is_validated_and_named(section, message):
    import yaml

    with pytest.raises(UserError) as err:
        parse_config({"name": "t", **yaml.safe_load(section)}, "c.yaml")
    assert str(err.value).startswith(f"c.yaml: {message}"), str(err.value)


def test_revision_with_a_local_dataset_file_is_an_error(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[]")
    with pytest.raises(UserError, match=r"dataset.revision = 'v1': applies to a hub id only"):
        parse_config({"name": "t", "dataset": {"source": str(data), "revision": "v1"},
                      "models": [{"name": "m", "base": "acme/tiny"}]}, "c.yaml")


def test_a_pinned_folder_missing_here_is_the_same_commit_from_this_machines_cache(tmp_path, monkeypatch):
    """A Ray worker on another node gets the driver's snapshot path; it loads the same commit from its own
    cache (here: another cache folder holding that commit), and says so in one line when it cannot."""
    from huggingface_hub import constants

    from tunesweep.hub import local_folder

    driver = tmp_path / "driver-cache" / "models--acme--tiny" / "snapshots" / C1  # not on this machine
    mine = snapshot(tmp_path / "hub", "model", "acme/tiny", C2)  # main moved on: the pinned commit must win
    (tmp_path / "hub" / "models--acme--tiny" / "snapshots" / C1).mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert local_folder(str(driver)) == str(tmp_path / "hub" / "models--acme--tiny" / "snapshots" / C1)
    assert local_folder(str(mine)) == str(mine)  # present: itself
    assert local_folder(str(tmp_path)) == str(tmp_path)  # not a snapshot folder: itself
    with pytest.raises(UserError, match="is not on this machine and cannot be fetched here"):
        local_folder(str(tmp_path / "driver-cache" / "models--acme--other" / "snapshots" / C1))
