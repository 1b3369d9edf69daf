"""Hostile inputs that used to end in a traceback (or do the wrong thing quietly): each is now one line on
stderr and exit 2, with nothing half-written. All in-process or on small files: no engine, no training."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from tunesweep.cli import main
from tunesweep.config import parse_config
from tunesweep.errors import UserError
from tunesweep.layout import WorkdirLock, prepare_workdir


def write_cfg(tmp_path, workdir=None, models="[{name: m, base: unused-base}]", extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: hostile\nworkdir: {workdir or tmp_path / 'work'}\n"
                    f"dataset: {{source: builtin:tasks, builtin_rows: 40, test_size: 4}}\nmodels: {models}\n{extra}")
    return path


def one_line_exit_2(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tunesweep: error: "), err
    return err


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "work").write_text("not a folder")
    err = one_line_exit_2(capsys, ["split", "--config", write_cfg(tmp_path)])
    assert f"{tmp_path / 'work'}: the workdir is a file, not a folder" in err


def test_workdir_not_writable(tmp_path, monkeypatch):
    # As root (CI containers) chmod does not stop writes: ask os.access the way a normal user's run would.
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"ro: the workdir is not writable"):
        prepare_workdir(tmp_path / "ro")


def test_non_utf8_dataset_names_the_file(tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(json.dumps({"instruction": "Café", "input": "", "output": "x"}).encode().replace(b"Caf",
                     b"Caf\xe9 "))
    cfg = write_cfg(tmp_path).read_text().replace("builtin:tasks", str(data))
    (tmp_path / "c.yaml").write_text(cfg)
    err = one_line_exit_2(capsys, ["split", "--config", tmp_path / "c.yaml"])
    assert f"{data}: not UTF-8 text" in err
    assert not (tmp_path / "work" / "alpaca_data").exists()


@pytest.mark.parametrize("value", [0, -3])
def test_max_steps_must_be_at_least_one(tmp_path, capsys, value):
    err = one_line_exit_2(capsys, ["finetune", "--config", write_cfg(tmp_path), "--max-steps", value])
    assert f"--max-steps {value}: must be at least 1" in err


@pytest.mark.parametrize("section, bad", [
    ("generation: {defaults: {top_k: \"50\"}}", "generation.defaults.top_k = '50'"),
    ("generation: {defaults: {temperature: true}}", "generation.defaults.temperature = True"),
    ("generation: {defaults: {temperature: .inf}}", "generation.defaults.temperature = inf"),
    ("generation: {sweep: {temperature: [0.5, .nan]}}", "generation.sweep.temperature"),
    ("seed: \"42\"", "seed = '42'"),
])
def test_config_types_are_strict(tmp_path, section, bad):
    import yaml

    text = write_cfg(tmp_path).read_text() + section + "\n"
    with pytest.raises(UserError) as err:
        parse_config(yaml.safe_load(text), "c.yaml")
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_numbers_that_are_numbers_still_pass(tmp_path):
    import yaml

    text = write_cfg(tmp_path).read_text() + "generation: {defaults: {temperature: 1, top_k: 5}, sweep: {temperature: [0, 0.5]}}\n"
    cfg = parse_config(yaml.safe_load(text), "c.yaml")
    assert cfg.generation.defaults.temperature == 1.0 and cfg.generation.sweep.temperature == [0.0, 0.5]


@pytest.mark.parametrize("models, why", [
    ("[{name: a, base: x}, {name: a.training, base: x}]", "must not end in '.training'"),
    ("[{name: .a, base: x}]", "models[0].name = '.a'"),
    ("[{name: Phi, base: x}, {name: phi, base: x}]", "duplicate model name 'phi'"),
])
def test_model_names_cannot_collide_with_tunesweep_folders(tmp_path, models, why):
    import yaml

    with pytest.raises(UserError, match=why.replace(".", r"\.").replace("(", r"\(").replace("[", r"\[")):
        parse_config(yaml.safe_load(write_cfg(tmp_path, models=models).read_text()), "c.yaml")


def test_human_eval_import_command_line_of_the_readme(tmp_path, monkeypatch):
    from tunesweep.evaluate import human_eval

    got = {}
    monkeypatch.setattr(human_eval, "import_ratings", lambda cfg, files: got.setdefault("files", files))
    assert main(["human-eval", "import", "--config", str(write_cfg(tmp_path)), "rated.csv", "b.csv"]) == 0
    assert got["files"] == ["rated.csv", "b.csv"]


def test_a_second_run_on_a_locked_workdir_names_the_holder(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    with WorkdirLock(tmp_path / "work", "tunesweep run --config c.yaml"):
        err = one_line_exit_2(capsys, ["split", "--config", cfg])
    assert f"in use by process {__import__('os').getpid()} (`tunesweep run --config c.yaml`)" in err
    assert not (tmp_path / "work" / "alpaca_data").exists()
    assert main(["split", "--config", str(cfg)]) == 0  # released: the next run proceeds


def _checkpoint(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    return ckpt


def test_model_folder_without_tokenizer(tmp_path, tiny_model_dir):
    from tunesweep.loading import check_checkpoint_folder

    ckpt = _checkpoint(tmp_path, tiny_model_dir)
    check_checkpoint_folder(str(ckpt))  # whole: passes
    for f in ckpt.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(UserError, match=rf"{ckpt}: no tokenizer"):
        check_checkpoint_folder(str(ckpt))


def test_truncated_safetensors_stop_generate_and_finetune_in_one_line(tmp_path, tiny_model_dir, capsys):
    ckpt = _checkpoint(tmp_path, tiny_model_dir)
    weights = next(ckpt.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    cfg = write_cfg(tmp_path, models=f"[{{name: m, base: {ckpt}, lora: null, evaluate_base: true}}]")
    assert main(["split", "--config", str(cfg)]) == 0
    for argv in (["finetune", "--config", cfg], ["generate", "--config", cfg, "--model", "m-base", "--backend", "hf"]):
        err = one_line_exit_2(capsys, argv)
        assert f"{weights}: truncated ({len(data) // 2} bytes of {len(data)})" in err, err
    assert not (tmp_path / "work" / "finetuned_models").exists() and not (tmp_path / "work" / "llm_responses").exists()
    # A header that is not safetensors at all.
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    from tunesweep.loading import check_checkpoint_folder

    with pytest.raises(UserError, match="not a safetensors file"):
        check_checkpoint_folder(str(ckpt))


# --- what a stage reads is what the stage before it wrote (issue 18 item 1) ------------------------------

@pytest.fixture
def scored_bleu_study(tmp_path, alpaca_demo_path):
    """A BLEU-only study of 5 real Alpaca rows and 2 configs, as generate and clean vouch for it, scored."""
    from test_scoring import write_responses, write_study
    from tunesweep.config import expand_sweep, load_config
    from tunesweep.evaluate.scoring import score

    records = json.loads(alpaca_demo_path.read_text())[:5]
    cfg_path = write_study(tmp_path, metrics="[bleu]", bootstrap=20)
    cfg = load_config(cfg_path)
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    write_responses(cfg, "tiny", records, {n: [r["output"][: 20 + 10 * i] for r in records]
                                           for i, n in enumerate(names)})
    score(cfg)
    return cfg_path, cfg, names


def test_a_response_edited_after_clean_is_not_scored(scored_bleu_study, capsys):
    from tunesweep.files import read_jsonl, write_jsonl

    cfg_path, cfg, names = scored_bleu_study
    path = cfg.path / "llm_responses" / "tiny" / f"{names[1]}.jsonl"
    recs = read_jsonl(path)
    write_jsonl(path, [{**r, "response": r["reference"]} for r in recs])  # BLEU 1.0 if it were scored
    for stage in ("score", "report"):
        err = one_line_exit_2(capsys, [stage, "--config", cfg_path])
        assert f"{path}: its `response` fields are not what the clean stage wrote" in err or (
            stage == "report" and "scored from responses that are not the current run's" in err), err


@pytest.mark.parametrize("change, what", [
    (("generation:", "generation: {max_new_tokens: 64, "), "max_new_tokens 128 -> 64"),
    (("seed: 11", "seed: 12"), "seed 11 -> 12"),
])
def test_changed_generation_settings_stop_score_and_report(scored_bleu_study, capsys, change, what):
    cfg_path, cfg, names = scored_bleu_study
    text = cfg_path.read_text()
    if change[0] == "generation:":
        text = text.replace("generation: {", "generation: {max_new_tokens: 64, ")
    else:
        text = text.replace(*change)
    cfg_path.write_text(text)
    for stage in ("score", "report"):
        err = one_line_exit_2(capsys, [stage, "--config", cfg_path])
        assert "generated with other settings than the config has now" in err and what in err, err


def test_an_hf_batch_size_change_stops_score_only_for_hf_responses(scored_bleu_study, capsys):
    from tunesweep.config import load_config
    from tunesweep.evaluate.scoring import score
    from tunesweep.files import read_json, write_json
    from tunesweep.layout import Workdir, response_settings

    cfg_path, cfg, names = scored_bleu_study
    cfg_path.write_text(cfg_path.read_text().replace("generation: {", "generation: {hf_batch_size: 3, "))
    score(load_config(cfg_path))  # vLLM responses: the hf batch size does not shape them
    manifest_path = Workdir(cfg.path).manifest("tiny")
    manifest = read_json(manifest_path)
    for entry in manifest["configs"].values():  # as an hf run with the default batch size records them
        entry.update(backend="hf", settings=response_settings(cfg, "hf"))
    write_json(manifest_path, manifest)
    capsys.readouterr()  # what the score above logged
    err = one_line_exit_2(capsys, ["score", "--config", cfg_path])
    assert "hf_batch_size 16 -> 3" in err, err


@pytest.mark.parametrize("edit", ["score", "deleted row", "comparison", "perplexity-less metrics.json"])
def test_report_refuses_eval_results_edited_since_score(scored_bleu_study, capsys, edit):
    from tunesweep.files import read_json, write_json
    from tunesweep.layout import Workdir

    cfg_path, cfg, names = scored_bleu_study
    paths = Workdir(cfg.path)
    assert main(["report", "--config", str(cfg_path)]) == 0  # as score wrote them: reported
    capsys.readouterr()
    table, comparisons = paths.table("tiny"), paths.comparisons
    if edit == "score":
        lines = table.read_text().splitlines()
        cells = lines[2].split(",")
        cells[2] = "0.999000"
        table.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")
        path = table
    elif edit == "deleted row":
        lines = table.read_text().splitlines()
        table.write_text("\n".join(lines[:-1]) + "\n")
        path = table
    elif edit == "comparison":
        lines = comparisons.read_text().splitlines()
        lines[1] = lines[1].replace(",", ",", 1)[:-1] + "9"  # the last cell of the first row changed
        comparisons.write_text("\n".join(lines) + "\n")
        path = comparisons
    else:  # metrics.json from before files were vouched for
        meta = read_json(paths.metrics_json)
        del meta["files"]
        write_json(paths.metrics_json, meta)
        path = table
    err = one_line_exit_2(capsys, ["report", "--config", cfg_path])
    assert err.startswith(f"tunesweep: error: {path}: ") and "rerun `tunesweep score" in err, err
