"""The README's Python API example runs as written (on a tiny config instead of configs/tiny.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_python_example() -> str:
    """The ```python block under README.md's "### From Python"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### From Python\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no ```python block under ### From Python"
    return match.group(1)


@pytest.mark.slow  # trains (2 steps), generates with transformers and scores: about 20 s on 2 cores
def test_the_readme_python_example_runs(tmp_path, tiny_model_dir, capsys):
    code = readme_python_example()
    assert 'load_config("configs/tiny.yaml"' in code
    config = tmp_path / "tiny.yaml"
    # A study small enough for a test: 2 training steps, 2 decoding configs, 4 test rows, no engine.
    config.write_text(f"""name: readme
workdir: {tmp_path / "work"}
dataset: {{source: builtin:tasks, builtin_rows: 40, test_size: 4}}
models:
  - name: tiny
    base: {tiny_model_dir}
    backend: peft
    load_in_4bit: false
    max_seq_length: 128
    lora: null
    train: {{max_steps: 2, batch_size: 4}}
generation:
  backend: hf
  max_new_tokens: 8
  sweep: {{temperature: [0.0]}}
evaluation: {{metrics: [bleu, rougeL]}}
""")
    exec(compile(code.replace("configs/tiny.yaml", str(config)), "README.md", "exec"), {"__name__": "__main__"})

    work = tmp_path / "work"
    table = pd.read_csv(work / "eval_results" / "tiny.csv", index_col="config")
    assert list(table.index) == ["top_k_50_num_beams_1_temp_0.8", "top_k_50_num_beams_1_temp_0.0"]
    assert table["bleu"].notna().all() and table["bleu_ci_low"].notna().all()  # the override: bootstrap 200
    printed = capsys.readouterr().out
    assert "top_k_50_num_beams_1_temp_0.0" in printed and "bleu_ci_low" in printed
    assert (work / "finetuned_models" / "tiny" / "tunesweep.json").is_file()
    assert (work / "eval_results" / "report.md").is_file() and (work / "eval_results" / "report.html").is_file()
