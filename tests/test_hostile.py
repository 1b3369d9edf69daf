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


# --- values the libraries would reject later: refused at load time, one line naming the key ------------------

def load_text(tmp_path, text: str):
    from tunesweep.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def cfg_text(tmp_path, extra="", models="[{name: m, base: unused-base}]", workdir=None) -> str:
    return write_cfg(tmp_path, workdir=workdir, models=models, extra=extra).read_text()


@pytest.mark.parametrize("section, bad", [
    ("seed: -1", "seed = -1"),
    (f"seed: {2**32}", f"seed = {2**32}"),
    ("generation: {defaults: {temperature: 1.0e-7}}", "generation.defaults.temperature = 1e-07"),
    ("generation: {sweep: {temperature: [0.5, 0.000001]}}", "generation.sweep.temperature"),
    ("generation: {engine: {dtype: fp32}}", "generation.engine.dtype = 'fp32'"),
    ("generation: {engine: {dtype: Float16}}", "generation.engine.dtype = 'Float16'"),
])
def test_values_the_libraries_reject_are_refused_at_load(tmp_path, section, bad):
    with pytest.raises(UserError) as err:
        load_text(tmp_path, cfg_text(tmp_path) + section + "\n")
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_the_edges_of_those_ranges_still_load(tmp_path):
    cfg = load_text(tmp_path, cfg_text(tmp_path) + f"seed: {2**32 - 1}\ngeneration: {{defaults: {{temperature: 1.0e-5}}, "
                    "sweep: {temperature: [0.0]}, engine: {dtype: half}}\n")
    assert cfg.seed == 2**32 - 1 and cfg.generation.defaults.temperature == 1e-5


def test_unknown_lr_scheduler_is_refused_and_the_known_ones_are_the_libraries(tmp_path):
    from transformers.trainer_utils import SchedulerType

    from tunesweep.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}
    models = "[{name: m, base: unused-base, train: {lr_scheduler: cosine_annealing}}]"
    with pytest.raises(UserError, match=r"models\[0\]\.train\.lr_scheduler = 'cosine_annealing'"):
        load_text(tmp_path, cfg_text(tmp_path, models=models))
    models = "[{name: m, base: unused-base, train: {lr_scheduler: warmup_stable_decay}}]"
    assert load_text(tmp_path, cfg_text(tmp_path, models=models)).models[0].train.lr_scheduler == "warmup_stable_decay"


def test_engine_dtypes_are_the_ones_vllm_accepts():
    from vllm.config.model import _STR_DTYPE_TO_TORCH_DTYPE

    from tunesweep.config import ENGINE_DTYPES

    assert set(ENGINE_DTYPES) == {"auto", *_STR_DTYPE_TO_TORCH_DTYPE}


@pytest.mark.parametrize("name", ["all", "comparisons", "human", "perplexity", "report", "Report", "race"])
def test_model_names_of_eval_results_tables_are_refused(tmp_path, name):
    with pytest.raises(UserError, match=rf"models\[0\]\.name = '{name}': is the name of a table in eval_results/"):
        load_text(tmp_path, cfg_text(tmp_path, models=f"[{{name: {name}, base: unused-base}}]"))


def test_positions_of_a_local_base_bound_the_lengths(tmp_path, tiny_model_dir):
    from tunesweep.config import max_positions

    limit = max_positions(str(tiny_model_dir))
    assert limit == json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    models = f"[{{name: m, base: {tiny_model_dir}}}]"
    for extra, bad in ((f"generation: {{max_new_tokens: {limit}}}", f"generation.max_new_tokens = {limit}"),
                       (f"generation: {{engine: {{max_model_len: {limit + 1}}}}}", "generation.engine.max_model_len"),
                       ):
        with pytest.raises(UserError) as err:
            load_text(tmp_path, cfg_text(tmp_path, models=models, extra=extra))
        assert bad in str(err.value) and f"beyond the {limit} positions" in str(err.value)
    models = f"[{{name: m, base: {tiny_model_dir}, max_seq_length: {limit * 2}}}]"
    with pytest.raises(UserError, match=r"models\[0\]\.max_seq_length"):
        load_text(tmp_path, cfg_text(tmp_path, models=models))
    ok = load_text(tmp_path, cfg_text(tmp_path, models=f"[{{name: m, base: {tiny_model_dir}}}]",
                                      extra=f"generation: {{max_new_tokens: {limit - 1}, engine: {{max_model_len: {limit}}}}}"))
    assert ok.generation.max_new_tokens == limit - 1


def test_workdir_inside_the_base_model_folder_is_refused(tmp_path, tiny_model_dir):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    models = f"[{{name: m, base: {base}}}]"
    for workdir in (base / "work", base):
        with pytest.raises(UserError, match=r"lies inside models\[0\]\.base"):
            load_text(tmp_path, cfg_text(tmp_path, models=models, workdir=workdir))
    assert load_text(tmp_path, cfg_text(tmp_path, models=models, workdir=tmp_path / "work")).workdir


def test_duplicate_yaml_keys_are_an_error_at_any_depth(tmp_path, capsys):
    text = cfg_text(tmp_path)
    for dup, key in ((text + "seed: 1\nseed: 2\n", "'seed'"),
                     (text + "generation: {max_new_tokens: 8, max_new_tokens: 9}\n", "'max_new_tokens'")):
        (tmp_path / "d.yaml").write_text(dup)
        err = one_line_exit_2(capsys, ["plan", "--config", tmp_path / "d.yaml"])
        assert f"duplicate key {key}" in err and "line" in err


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    (tmp_path / "l1.yaml").write_bytes(cfg_text(tmp_path).replace("hostile", "caf\xe9").encode("latin-1"))
    err = one_line_exit_2(capsys, ["plan", "--config", tmp_path / "l1.yaml"])
    assert "l1.yaml: not UTF-8 text" in err


def test_configs_that_differ_only_in_ignored_parameters_are_merged_and_the_plan_says_which(tmp_path, capsys):
    from tunesweep.config import expand_sweep, sweep_merges

    text = cfg_text(tmp_path, extra="generation: {mode: grid, defaults: {top_k: 50, num_beams: 1, temperature: 0.8}, "
                                    "sweep: {top_k: [10, 50], num_beams: [1, 3], temperature: [0.0, 0.8]}}\n")
    cfg = load_text(tmp_path, text)
    names = [c.name for c in expand_sweep(cfg.generation)]
    # Greedy ignores top_k (2 -> 1), beam search ignores top_k and temperature (4 -> 1); sampling keeps both.
    assert names == ["top_k_50_num_beams_1_temp_0.0", "top_k_10_num_beams_1_temp_0.8", "top_k_50_num_beams_3_temp_0.8",
                     "top_k_50_num_beams_1_temp_0.8"]
    assert sweep_merges(cfg.generation) == {
        "top_k_50_num_beams_1_temp_0.0": ["top_k_10_num_beams_1_temp_0.0"],
        "top_k_50_num_beams_3_temp_0.8": ["top_k_10_num_beams_3_temp_0.0", "top_k_10_num_beams_3_temp_0.8",
                                          "top_k_50_num_beams_3_temp_0.0"]}
    assert main(["plan", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "top_k_50_num_beams_3_temp_0.8 <- top_k_10_num_beams_3_temp_0.0" in out
    # one_at_a_time around a greedy centre: a top_k sweep would only repeat the centre.
    cfg = load_text(tmp_path, cfg_text(tmp_path, extra="generation: {defaults: {temperature: 0.0}, "
                                                       "sweep: {top_k: [10, 25], temperature: [0.5]}}\n"))
    assert [c.name for c in expand_sweep(cfg.generation)] == ["top_k_50_num_beams_1_temp_0.0",
                                                              "top_k_50_num_beams_1_temp_0.5"]


def test_a_huge_grid_warns_with_its_size(tmp_path, caplog, capsys):
    big = "sweep: {top_k: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], temperature: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]}"
    with caplog.at_level("WARNING"):
        load_text(tmp_path, cfg_text(tmp_path, extra=f"generation: {{mode: grid, max_new_tokens: 10, {big}}}\n"))
    assert "110 decoding configs x 1 model(s) x 4 test rows x max_new_tokens 10 = up to 4,400 new tokens" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_text(tmp_path, cfg_text(tmp_path, extra="generation: {mode: grid, sweep: {top_k: [1, 2]}}\n"))
    assert "decoding configs" not in caplog.text


def test_test_size_that_rounds_to_no_rows_says_the_test_set_is_empty(tmp_path, capsys):
    err = one_line_exit_2(capsys, ["split", "--config", write_cfg(tmp_path), "--test-size", "0.0001"])
    assert "dataset.test_size = 0.0001: the test set would be empty" in err and "training row" not in err


@pytest.mark.parametrize("content", ["[]", "[1, 2]", "\"text\"", "{\"configs\": [1], \"test_rows\": 4}",
                                     "{\"configs\": {\"c\": [1]}, \"test_rows\": 4}"])
def test_manifest_of_the_wrong_shape_is_one_line_or_regenerated(tmp_path, content):
    from tunesweep.generate.stage import is_current, load_manifest
    from tunesweep.layout import read_target_responses

    cfg = write_cfg(tmp_path)
    assert main(["split", "--config", str(cfg)]) == 0
    folder = tmp_path / "work" / "llm_responses" / "m"
    folder.mkdir(parents=True)
    (folder / "c.jsonl").write_text("")
    (folder / "manifest.json").write_text(content)
    with pytest.raises(UserError) as err:  # score, report, human-eval read through this
        read_target_responses(tmp_path / "work", "m", ["c"])
    assert "manifest.json" in str(err.value) and "\n" not in str(err.value)
    manifest = load_manifest(folder / "manifest.json")  # generate: everything is redone
    assert manifest.to_json() == {} or not is_current(folder / "c.jsonl", type("Job", (), {"config": "c", "inputs": {}}),
                                                      manifest)


# --- nothing is written outside the workdir ------------------------------------------------------------------

def test_workdir_and_paths_expand_home_and_variables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STUDY_ROOT", str(tmp_path / "root"))
    monkeypatch.chdir(tmp_path)
    for given, expected in (("~/w", tmp_path / "home" / "w"), ("$STUDY_ROOT/w", tmp_path / "root" / "w"),
                            ("${STUDY_ROOT}/x", tmp_path / "root" / "x")):
        cfg = write_cfg(tmp_path, workdir=given)
        assert main(["plan", "--config", str(cfg), "--get", "workdir"]) == 0
        assert capsys.readouterr().out.strip() == str(expected)
        assert main(["split", "--config", str(cfg)]) == 0
        assert (expected / "alpaca_data" / "test.jsonl").is_file()
        capsys.readouterr()
    assert not any(p.name.startswith(("~", "$")) for p in tmp_path.rglob("*"))
    # other path keys too: a dataset file under ~
    (tmp_path / "home" / "d.jsonl").write_text((tmp_path / "root" / "w" / "alpaca_data" / "train.jsonl").read_text())
    cfg = write_cfg(tmp_path, workdir=tmp_path / "w2")
    cfg.write_text(cfg.read_text().replace("builtin:tasks", "~/d.jsonl"))
    assert main(["split", "--config", str(cfg)]) == 0
    err = one_line_exit_2(capsys, ["plan", "--config", write_cfg(tmp_path, workdir="$NOT_SET_ANYWHERE/w")])
    assert "workdir = '$NOT_SET_ANYWHERE/w': names an environment variable that is not set" in err


@pytest.mark.parametrize("workdir", ["/", "/etc", "/usr/../", "/proc/self", "/var"])
def test_system_folders_are_refused_as_workdir(tmp_path, capsys, workdir):
    err = one_line_exit_2(capsys, ["split", "--config", write_cfg(tmp_path, workdir=workdir)])
    assert f"workdir = '{workdir}': resolves to the system folder" in err


@pytest.fixture
def outside(tmp_path):
    """A file outside the workdir that no command may modify, and what it holds."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("keep me\n")
    return path


def assert_untouched(outside):
    assert outside.read_text() == "keep me\n"
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("link", [".tunesweep.lock", "logs/split.log", "alpaca_data/train.jsonl",
                                  "eval_results/report.md"])
def test_a_link_to_a_file_outside_is_never_written_through(tmp_path, capsys, outside, link):
    cfg = write_cfg(tmp_path)
    where = tmp_path / "work" / link
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(outside)
    for argv in (["run", "--config", cfg, "--only", "split"], ["split", "--config", cfg, "--force"],
                 ["report", "--config", cfg]):
        err = one_line_exit_2(capsys, argv)
        assert f"{where}: a symlink that leads out of the workdir" in err
        assert_untouched(outside)


@pytest.mark.parametrize("folder", ["alpaca_data", "logs", "eval_results/plots", "finetuned_models"])
def test_a_linked_folder_leading_outside_is_refused(tmp_path, capsys, outside, folder):
    cfg = write_cfg(tmp_path)
    where = tmp_path / "work" / folder
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(outside.parent, target_is_directory=True)
    err = one_line_exit_2(capsys, ["run", "--config", cfg, "--only", "split"])
    assert f"{where}: a symlink that leads out of the workdir" in err
    assert_untouched(outside)


def test_links_that_stay_inside_the_workdir_are_fine(tmp_path):
    cfg = write_cfg(tmp_path)
    (tmp_path / "work" / "elsewhere").mkdir(parents=True)
    (tmp_path / "work" / "logs").symlink_to(tmp_path / "work" / "elsewhere", target_is_directory=True)
    assert main(["run", "--config", str(cfg), "--only", "split"]) == 0
    assert (tmp_path / "work" / "elsewhere" / "split.log").is_file()


def test_writers_refuse_links_made_after_the_lock_was_taken(tmp_path, outside):
    """The check at the lock covers what exists then; a link planted while a command runs is refused by the
    writers themselves (atomic writes check the resolved folder, logs and the lock open with O_NOFOLLOW)."""
    from tunesweep.files import LogFileHandler, write_text

    work = tmp_path / "work"
    with WorkdirLock(work, "test"):
        (work / "eval_results").symlink_to(outside.parent, target_is_directory=True)
        with pytest.raises(UserError, match="a symlink that leads out of the workdir"):
            write_text(work / "eval_results" / "all.csv", "x\n")
        (work / "logs").mkdir()
        (work / "logs" / "run.log").symlink_to(outside)
        with pytest.raises(UserError, match="a symlink that leads out of the workdir"):
            LogFileHandler(work / "logs" / "run.log")
    assert_untouched(outside)
    # Outside any locked workdir (a training child process) a log that is a link is still not followed.
    (tmp_path / "child.log").symlink_to(outside)
    with pytest.raises(UserError, match="is a symlink"):
        LogFileHandler(tmp_path / "child.log").emit(__import__("logging").makeLogRecord({"msg": "x"}))
    assert_untouched(outside)


# --- Ray: an address that does not answer ends the run in one line, and SIGTERM ends it too -----------------

def ray_cfg(tmp_path, tiny_model_dir, timeout: float):
    """A split study whose finetune runs on Ray (and so first joins the cluster)."""
    cfg = write_cfg(tmp_path, models=f"[{{name: m, base: {tiny_model_dir}, lora: null}}]",
                    extra=f"execution: {{backend: ray, connect_timeout: {timeout}}}\n")
    assert main(["split", "--config", str(cfg)]) == 0
    return cfg


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections (the kernel completes the handshake) and never says a word: Ray
    cannot tell it from a slow head and, left alone, retries it for minutes."""
    import socket

    sock = socket.socket()
    sock.bind(("", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def lock_is_free(workdir) -> bool:
    try:
        with WorkdirLock(workdir, "test"):
            return True
    except UserError:
        return False


def test_an_unreachable_ray_address_is_one_line_and_frees_the_lock(tmp_path, tiny_model_dir):
    from helpers import run_tunesweep

    cfg = ray_cfg(tmp_path, tiny_model_dir, 30)
    r = run_tunesweep("finetune", "--config", cfg, "--ray-address", "127.0.0.1:1", timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "tunesweep: error: execution.address = '127.0.0.1:1': cannot reach a Ray cluster at 127.0.0.1:1 within 30 s "
        "(Connection refused); start one with `ray start --head`, fix the address, or raise execution.connect_timeout"]
    assert lock_is_free(tmp_path / "work")
    assert not (tmp_path / "work" / "finetuned_models").exists()


def test_a_ray_address_that_never_answers_ends_at_the_connect_timeout(tmp_path, tiny_model_dir, silent_port):
    from helpers import run_tunesweep

    cfg = ray_cfg(tmp_path, tiny_model_dir, 5)
    r = run_tunesweep("finetune", "--config", cfg, "--ray-address", f"127.0.0.1:{silent_port}", timeout=300)
    assert r.returncode == 2, r.stderr
    # Ray logs its own retries on stderr as they happen; tunesweep's last word is one line.
    assert r.stderr.strip().splitlines()[-1] == (
        f"tunesweep: error: execution.address = '127.0.0.1:{silent_port}': no answer from the Ray cluster within 5 s "
        "(execution.connect_timeout); is it a Ray head's address?")
    assert "Traceback" not in r.stderr and lock_is_free(tmp_path / "work")


def test_sigterm_while_joining_ray_ends_the_run_and_frees_the_lock(tmp_path, tiny_model_dir, silent_port):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    cfg = ray_cfg(tmp_path, tiny_model_dir, 600)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tunesweep", "finetune", "--config", str(cfg), "--ray-address",
                                 f"127.0.0.1:{silent_port}"], cwd=REPO, stderr=fh, stdout=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # Inside ray.init (native code, where a Python signal handler cannot run) before the signal is sent.
        while "Connecting to existing Ray cluster" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            time.sleep(0.5)
        time.sleep(2)
        assert not lock_is_free(tmp_path / "work")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert "stopped by SIGTERM while joining the Ray cluster" in err.read_text().strip().splitlines()[-1]
    assert lock_is_free(tmp_path / "work")


def test_doctor_with_an_unreachable_ray_address_reports_it_and_ends(tmp_path):
    """Whether or not this process is in a Ray already (`make test`'s workers may have started one for an
    earlier module), the address asked about is the one reported."""
    from tunesweep.cluster import cluster_summary

    text = cluster_summary("127.0.0.1:1")
    assert "cluster 127.0.0.1:1: not reachable" in text and "Connection refused" in text
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            text = cluster_summary("127.0.0.1:1")
        finally:
            ray.shutdown()
        assert "cluster 127.0.0.1:1: not reachable" in text and "Connection refused" in text


# --- spreadsheet formulas: text cells of every CSV a person opens are inert, numbers stay numbers -------------

HOSTILE_TEXTS = ["=HYPERLINK(\"http://x\",\"click\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1", "'quoted",
                 "''=", "-0.03", "plain text", "", "a=b"]


def test_text_cells_are_escaped_and_read_back_as_written(tmp_path):
    from tunesweep.layout import FORMULA_STARTS, read_frame, read_human, read_rows, write_table

    # (a lone CR is left to the rating sheet's test: tables hold tunesweep's own names, written with LF rows)
    texts = [t for t in HOSTILE_TEXTS if "\r" not in t]
    rows = [{"model": text, "config": f"c{i}", "human": -0.03 * i, "human_n": i} for i, text in enumerate(texts)]
    path = tmp_path / "human.csv"
    write_table(path, ["model", "config", "human", "human_n"], rows)
    with open(path, newline="", encoding="utf-8") as fh:
        cells = list(__import__("csv").reader(fh))[1:]
    assert [row[0] for row in cells if row[0].startswith(FORMULA_STARTS)] == ["-0.03"]  # a number: no formula
    assert [row[2] for row in cells][1] == "-0.030000"  # a negative number is a number, not a formula
    assert [r["model"] for r in read_rows(path)] == texts
    assert read_frame(path)["model"].fillna("").tolist() == texts
    assert read_frame(path)["human"].tolist() == pytest.approx([-0.03 * i for i in range(len(texts))])
    assert set(read_human(path)) == {(t, f"c{i}") for i, t in enumerate(texts)}
    # score merges the rows of targets it did not rescore: read back as text and written again, they do not change
    # (a number read back as "-0.030000" is still a number, not a text cell to escape).
    before = path.read_bytes()
    write_table(path, ["model", "config", "human", "human_n"], read_rows(path))
    assert path.read_bytes() == before


def test_rating_sheet_cells_are_inert_and_the_rated_sheet_imports(tmp_path):
    import csv

    from helpers import vouch_for_responses
    from tunesweep.config import expand_sweep, load_config
    from tunesweep.evaluate.human_eval import SHEET_COLUMNS, export_sheet, import_ratings
    from tunesweep.files import write_jsonl
    from tunesweep.layout import FORMULA_STARTS

    cfg = load_config(write_cfg(tmp_path, extra="evaluation: {metrics: [bleu], bootstrap: 0, human: {rows_per_config: 12}}\n"))
    work = cfg.path
    texts = [t or "empty" for t in HOSTILE_TEXTS]
    write_jsonl(work / "alpaca_data" / "test.jsonl", [{"id": f"id{i}", "instruction": f"=cmd|' /C calc'!A{i}",
                                                        "input": "@x", "output": f"-{i}"} for i in range(len(texts))])
    for dc in expand_sweep(cfg.generation):
        write_jsonl(work / "llm_responses" / "m" / f"{dc.name}.jsonl",
                    [{"id": f"id{i}", "prompt": "p", "reference": f"-{i}", "response_raw": t, "response": t,
                      "finish_reason": "stop", "num_tokens": 1, "config": dc.name, "model": "m"}
                     for i, t in enumerate(texts)])
    vouch_for_responses(work, "m", cfg=cfg)
    sheet = export_sheet(cfg)
    with open(sheet, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for column in ("instruction", "input", "reference", "response"):
            assert not row[column].startswith(FORMULA_STARTS) or float(row[column]) <= 0, (column, row[column])
    assert {r["response"] for r in rows} >= {"'=HYPERLINK(\"http://x\",\"click\")", "-0.03", "'''=", "plain text"}
    for row in rows:
        row["rating"] = "3"
    rated = tmp_path / "rated.csv"
    with open(rated, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    import_ratings(cfg, [str(rated)])  # the escaped responses match the exported ones
    # A spreadsheet that dropped the apostrophes when it saved the sheet: still the same responses.
    for row in rows:
        row["response"] = row["response"].removeprefix("'")
    with open(rated, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    import_ratings(cfg, [str(rated)])


# --- late failures that are the machine's, not tunesweep's: one line, exit 2 ---------------------------------

TORCH_CHILD = """\
import sys
from pathlib import Path

import torch

from tunesweep.errors import UserError, disk_full_message
from tunesweep.isolation import run_isolated

if __name__ == "__main__":
    disk = Path(sys.argv[1])
    state = {"exp_avg": torch.zeros(100_000)}  # an optimizer state as TRL checkpoints it, 400 KB
    try:
        torch.save(state, disk / "optimizer.pt")
    except RuntimeError as exc:
        print("HERE", disk_full_message(exc))
    try:
        run_isolated(torch.save, state, disk / "checkpoint-2" / "optimizer.pt", name="finetune tiny")
    except UserError as exc:
        print("CHILD", exc)
"""


def test_disk_full_while_torch_saves_a_checkpoint_is_the_disk_full_line(tmp_path):
    import shlex
    import sys

    from test_disk_full import namespace_problem

    problem = namespace_problem()
    if problem:
        pytest.skip(f"no real full disk to test on: {problem}")
    from helpers import REPO

    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "checkpoint-2").mkdir()
    script = tmp_path / "child.py"
    script.write_text(TORCH_CHILD)
    full = (f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(disk))} && mkdir {shlex.quote(str(disk))}/checkpoint-2 "
            f"&& {shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(disk))}")
    r = __import__("subprocess").run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", full],
                                     capture_output=True, text=True, timeout=300,
                                     env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = r.stdout.splitlines()
    assert [x.split(" ", 1)[0] for x in lines] == ["HERE", "CHILD"], (r.stdout, r.stderr)
    assert lines[0].startswith("HERE the disk is full while writing an output (") and "unexpected pos" in lines[0]
    assert lines[1].startswith("CHILD the disk is full while writing an output (") and "rerun" in lines[1]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("folder", ["alpaca_data", "eval_results", "logs"])
def test_a_file_where_a_workdir_folder_belongs_is_one_line_before_any_work(tmp_path, capsys, folder):
    cfg = write_cfg(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / folder).write_text("a file\n")
    err = one_line_exit_2(capsys, ["run", "--config", cfg, "--only", "split"])
    assert f"{tmp_path / 'work' / folder}: a file where tunesweep keeps a folder" in err
    assert (tmp_path / "work" / folder).read_text() == "a file\n"


def test_a_workdir_folder_this_user_cannot_write_is_one_line_before_any_work(tmp_path):
    """For real, as a user without root's powers (root writes anywhere): as root, the command runs in a user
    namespace of its own (`unshare --user`, no uid mapped), where the owner's permission bits bind it too."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    prefix = []
    if os.getuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root and the unshare command is missing: no way to drop root's powers here")
        prefix = ["unshare", "--user"]
    cfg = write_cfg(tmp_path)

    def run(*argv):
        return subprocess.run([*prefix, sys.executable, "-m", "tunesweep", *argv, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})

    assert main(["split", "--config", str(cfg)]) == 0
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.getuid())"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop root's powers here: {probe.stderr.strip()[-200:]}")
    uid = probe.stdout.strip()
    for folder, argv in (("alpaca_data", ["split", "--force"]), ("logs", ["run", "--only", "split"]),
                         ("llm_responses/m", ["clean"])):
        where = tmp_path / "work" / folder
        where.mkdir(parents=True, exist_ok=True)
        where.chmod(0o555)
        try:
            r = run(*argv)
        finally:
            where.chmod(0o755)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"tunesweep: error: {where}: not writable by this user (uid {uid}); fix its permissions (or set another "
            "workdir)"], r.stderr
    # Whatever else this user may not read or write (here the dataset file): one line naming it, no traceback.
    data = tmp_path / "data.jsonl"
    data.write_text((tmp_path / "work" / "alpaca_data" / "train.jsonl").read_text())
    data.chmod(0)
    cfg.write_text(cfg.read_text().replace("builtin:tasks", str(data)))
    r = run("split", "--force")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"tunesweep: error: {data}: permission denied for this user; fix its permissions"], r.stderr


def test_scaled_rope_claims_no_position_limit(tmp_path, tiny_model_dir):
    from tunesweep.config import max_positions

    base = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, base)
    conf = json.loads((base / "config.json").read_text())
    conf["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (base / "config.json").write_text(json.dumps(conf))
    assert max_positions(str(base)) is None and max_positions(str(tiny_model_dir)) == conf["max_position_embeddings"]


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
