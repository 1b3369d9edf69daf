"""The typed config: validation errors name the key and value; sweep expansion; plan."""

import json

import pytest

from helpers import REPO, run_tunesweep
from tunesweep.config import config_name, expand_sweep, parse_config, GenerationConfig
from tunesweep.errors import UserError

MINIMAL = {"name": "t", "models": [{"name": "m", "base": "some/base"}]}


def with_(**patch):
    data = json.loads(json.dumps(MINIMAL))
    for dotted, value in patch.items():
        cur = data
        *parents, last = dotted.split("__")
        for p in parents:
            cur = cur[int(p)] if p.isdigit() else cur.setdefault(p, {})
        cur[last] = value
    return data


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"generation__defaults__temperature": -0.5}, "generation.defaults.temperature = -0.5"),
        ({"generation__defaults__num_beams": 0}, "generation.defaults.num_beams = 0"),
        ({"generation__defaults__top_k": -1}, "generation.defaults.top_k = -1"),
        ({"generation__max_new_tokens": 0}, "generation.max_new_tokens = 0"),
        ({"generation__sweep__temperature": [0.5, -1.0]}, "generation.sweep.temperature = [0.5, -1.0]"),
        ({"generation__sweep__num_beams": [2, 0]}, "generation.sweep.num_beams = [2, 0]"),
        ({"generation__mode": "random"}, "generation.mode = 'random'"),
        ({"dataset__test_size": 1.5}, "dataset.test_size = 1.5"),
        ({"seed": "abc"}, "seed = 'abc'"),
        ({"generation__temprature": 0.3}, "unknown key 'generation.temprature'"),
        ({"models__0__lora__r": 0}, "models[0].lora.r = 0"),
    ],
)
def test_bad_values_name_key_and_value(patch, expected):
    with pytest.raises(UserError) as exc:
        parse_config(with_(**patch), "cfg.yaml")
    msg = str(exc.value)
    assert msg.startswith("cfg.yaml: ")
    assert expected in msg
    assert "\n" not in msg


def test_duplicate_model_names_rejected():
    data = with_()
    data["models"].append({"name": "m", "base": "other"})
    with pytest.raises(UserError, match="duplicate model name 'm'"):
        parse_config(data, "cfg.yaml")


def test_missing_required_key():
    with pytest.raises(UserError, match=r"models\[0\]\.base: required key is missing"):
        parse_config({"name": "t", "models": [{"name": "m"}]}, "cfg.yaml")


def test_config_names_match_course_reports():
    assert config_name(50, 1, 0.8) == "top_k_50_num_beams_1_temp_0.8"
    assert config_name(50, 1, 0) == "top_k_50_num_beams_1_temp_0.0"
    assert config_name(10, 3, 1) == "top_k_10_num_beams_3_temp_1.0"
    assert config_name(40, 1, 0.25) == "top_k_40_num_beams_1_temp_0.25"


def test_one_at_a_time_expansion_dedupes_the_centre():
    gen = GenerationConfig(defaults={"top_k": 50, "num_beams": 1, "temperature": 0.8},
                           sweep={"top_k": [10, 50], "num_beams": [1, 4], "temperature": [0.0, 0.8]})
    names = [c.name for c in expand_sweep(gen)]
    assert names == [
        "top_k_50_num_beams_1_temp_0.8",
        "top_k_10_num_beams_1_temp_0.8",
        "top_k_50_num_beams_4_temp_0.8",
        "top_k_50_num_beams_1_temp_0.0",
    ]


def test_grid_expansion_and_modes():
    gen = GenerationConfig(mode="grid", sweep={"top_k": [10, 20], "num_beams": [1, 3], "temperature": [0.0, 1.0]})
    cfgs = expand_sweep(gen)
    # 8 combinations, but the two greedy ones and the four beam ones generate the same text: one config each.
    assert len(cfgs) == 4
    by_name = {c.name: c for c in cfgs}
    # beam wins over greedy: vLLM beam search has no temperature at all
    assert by_name["top_k_10_num_beams_3_temp_0.0"].mode == "beam"
    assert by_name["top_k_10_num_beams_3_temp_0.0"].ignored == ("top_k", "temperature")
    assert by_name["top_k_10_num_beams_1_temp_0.0"].mode == "greedy"
    assert by_name["top_k_10_num_beams_1_temp_0.0"].ignored == ("top_k",)
    assert by_name["top_k_20_num_beams_1_temp_1.0"].mode == "sample"
    assert by_name["top_k_20_num_beams_1_temp_1.0"].ignored == ()


def test_plan_alpaca_study_json():
    r = run_tunesweep("plan", "--config", REPO / "configs" / "alpaca.yaml", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert len(entries) == 39
    assert {e["model"] for e in entries} == {"llama2", "mistral", "phi2"}
    for e in entries:
        assert {"model", "config", "mode", "top_k", "num_beams", "temperature"} <= set(e)
        if e["num_beams"] > 1:
            assert e["mode"] == "beam"
        elif e["temperature"] == 0.0:
            assert e["mode"] == "greedy"
        else:
            assert e["mode"] == "sample"
    assert sum(e["mode"] == "greedy" for e in entries) == 3
    assert sum(e["mode"] == "beam" for e in entries) == 12
    per_model = [e["config"] for e in entries if e["model"] == "llama2"]
    assert per_model[0] == "top_k_50_num_beams_1_temp_0.8" and len(set(per_model)) == 13


def test_plan_includes_base_rows(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nmodels:\n  - {name: m, base: x, evaluate_base: true}\n"
                   "generation: {sweep: {top_k: [10]}}\n")
    r = run_tunesweep("plan", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    models = [e["model"] for e in json.loads(r.stdout)]
    assert models == ["m", "m", "m-base", "m-base"]


def test_cli_bad_config_exit_code_2_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nmodels:\n  - {name: m, base: x}\ngeneration: {defaults: {temperature: -1}}\n")
    r = run_tunesweep("plan", "--config", cfg)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "generation.defaults.temperature = -1" in lines[0]


def test_shipped_configs_validate():
    from tunesweep.config import load_config

    for name in ("alpaca.yaml", "tiny.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert len(expand_sweep(cfg.generation)) == 13
