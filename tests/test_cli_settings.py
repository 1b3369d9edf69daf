"""Command-line settings come from the config schema: `--set key.path=value` for any setting, and the named
flags (each one setting) with the schema's types and choices. All cheap: argparse and config validation only."""

from __future__ import annotations

import pytest

from helpers import run_tunesweep
from tunesweep.cli import SETTING_FLAGS, build_parser, config_overrides
from tunesweep.config import load_config, setting_choices, setting_type

CONFIG = """\
name: flags
workdir: {workdir}
dataset: {{source: builtin:tasks, test_size: 4}}
models:
  - {{name: a, base: org/a, lora: null}}
  - {{name: b, base: org/b}}
evaluation: {{metrics: [bleu], bootstrap: 0}}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "flags.yaml"
    path.write_text(CONFIG.format(workdir=tmp_path / "work"))
    return path


def load(config, *argv, command="score"):
    args = build_parser().parse_args([command, "-c", str(config), *argv])
    return load_config(config, config_overrides(args))


def test_set_reaches_any_setting_with_its_type(config):
    cfg = load(config, "--set", "evaluation.bootstrap=200", "--set", "evaluation.metrics=[bleu, rougeL]",
               "--set", "models.1.train.max_steps=5", "--set", "models.0.lora.r=8", "--set", "seed=7",
               "--set", "generation.defaults.temperature=0.5", "--set", "dataset.source=007")
    assert cfg.evaluation.bootstrap == 200
    assert cfg.evaluation.metrics == ["bleu", "rougeL"]
    assert cfg.models[1].train.max_steps == 5 and cfg.models[0].train.max_steps is None
    assert cfg.models[0].lora.r == 8  # a null section is created
    assert cfg.seed == 7 and cfg.generation.defaults.temperature == 0.5
    assert cfg.dataset.source == "007"  # a text setting keeps the text as typed, not the YAML number 7
    # A later --set wins; a named flag and --set meet in one dict.
    cfg = load(config, "--set", "seed=1", "--set", "seed=2", "--execution", "ray", "--retries", "0")
    assert (cfg.seed, cfg.execution.backend, cfg.execution.retries) == (2, "ray", 0)
    assert load(config, "--set", "models.1.lora=null").models[1].lora is None


@pytest.mark.parametrize("argv, message", [
    (["--set", "evaluation.bootstap=3"], "evaluation has no setting 'bootstap' (it has metrics,"),
    (["--set", "models.b.seed=3"], "models is a list; name an item by its index (models.0)"),
    (["--set", "seed.x=3"], "seed is a single value, not a section"),
    (["--set", "seed"], "expected KEY=VALUE"),
    (["--execution", "rayy"], "invalid choice: 'rayy' (choose from 'local', 'ray')"),
])
def test_a_bad_setting_is_one_line_from_argparse(config, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["score", "-c", str(config), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_named_flags_take_types_and_choices_from_the_schema(config):
    assert setting_choices("execution.backend") == ["local", "ray"]
    for f in SETTING_FLAGS:
        setting_type(f.key)  # every named flag names a setting of the schema (else a UserError)
    cfg = load(config, "--replicas", "3", "--tracking-uri", "sqlite:///x.db", command="run")
    assert cfg.execution.replicas == 3
    assert (cfg.tracking.backend, cfg.tracking.uri) == ("mlflow", "sqlite:///x.db")
    cfg = load(config, "--test-size", "0.25", "--seed", "3", "--dataset", "builtin:tasks", command="split")
    assert (cfg.dataset.test_size, cfg.seed) == (0.25, 3)
    assert load(config, "--test-size", "12", command="split").dataset.test_size == 12


def test_the_console_script_reports_a_set_beyond_a_list_in_one_line(config):
    out = run_tunesweep("plan", "-c", config, "--set", "models.5.name=x")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith("models.5.name: models has 2 items")
