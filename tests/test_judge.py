"""The judge's core: the pairwise prompt and its one-token labels, verdicts through the real vLLM and
transformers backends on the tiny model, and the win-rate statistics against worked examples and
scikit-learn."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tunesweep.errors import UserError
from tunesweep.judge.prompt import Labels, pairwise_text, pick_labels, prompt_token_ids
from tunesweep.evaluate.winrate import bootstrap_indices, length_design, lc_win_rate, win_rate
from tunesweep.judge.verdict import (Pair, Verdict, flip_share, hf_scorer, judge_pairs, normalised, unsure_count,
                                     verdict_from)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from tunesweep.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from tunesweep.loading import load_for_inference

    model, _ = load_for_inference(str(tiny_model_dir))
    return model


@pytest.fixture(scope="module")
def pairs(alpaca_demo_path) -> list[Pair]:
    """Real Alpaca instructions: a short answer against a longer one, and one pair of identical answers."""
    records = json.loads(alpaca_demo_path.read_text())[:12]
    out = []
    for r in records:
        full = r["output"][:300]
        out.append(Pair(r["instruction"], r["input"], full[: len(full) // 3], full))
    same = records[0]["output"][:200]
    out.append(Pair(records[0]["instruction"], records[0]["input"], same, same))
    return out


# --- the prompt -------------------------------------------------------------------------------------

def test_labels_are_single_tokens_of_the_judge_tokenizer(tokenizer):
    labels = pick_labels(tokenizer)
    for text, token in ((labels.first, labels.first_id), (labels.second, labels.second_id)):
        assert tokenizer.decode([token]).strip() == text
    assert labels.first_id != labels.second_id


def test_a_tokenizer_without_single_token_labels_is_refused_in_one_line():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level vocabulary without the labels: every label is the same unknown token.
    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "answer": 1, "better": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(UserError, match="no single-token answer labels") as err:
        pick_labels(tok, judge="judge-x")
    assert "\n" not in str(err.value) and "judge-x" in str(err.value)


def test_prompt_shows_both_answers_under_their_labels_and_the_input_only_when_there_is_one(tokenizer):
    labels = pick_labels(tokenizer)
    text = pairwise_text("Sum the numbers.", "2, 3", "It is 5.", "Five.", labels)
    assert text.index("Sum the numbers.") < text.index("2, 3") < text.index("It is 5.") < text.index("Five.")
    assert "### Answer A:\nIt is 5." in text and "### Answer B:\nFive." in text
    assert "### Input:" not in pairwise_text("Say hi.", "  ", "hi", "hello", labels)
    # No chat template on the tiny tokenizer: the plain text with its BOS.
    ids = prompt_token_ids(tokenizer, text)
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == text


def test_a_chat_template_wraps_the_prompt_as_a_user_turn_and_the_label_opens_the_reply(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    labels = pick_labels(tok)
    assert [tok.decode([i]) for i in labels.ids] == ["A", "B"]  # bare labels: they start the reply
    text = pairwise_text("Say hi.", "", "hi", "hello", labels)
    decoded = tok.decode(prompt_token_ids(tok, text))
    assert decoded.startswith("<|user|>" + text) and decoded.endswith("<|assistant|>")


# --- verdict arithmetic -----------------------------------------------------------------------------

def test_normalised_probability_and_mass_by_hand():
    p_a, mass = normalised(math.log(0.3), math.log(0.1))
    assert p_a == pytest.approx(0.75) and mass == pytest.approx(0.4)
    assert normalised(-math.inf, -math.inf) == (0.5, 0.0)
    assert normalised(0.0, -2000.0)[0] == 1.0 and normalised(-2000.0, 0.0)[0] == 0.0


def test_both_orders_average_and_flips_by_hand():
    # Order 1 (test shown as A): P(A) = 0.8 -> test wins; order 2 (test shown as B): P(A) = 0.3 -> test wins.
    agree = verdict_from(0.8, 0.9, 0.3, 0.4)
    assert agree.preference == pytest.approx((0.8 + (1 - 0.3)) / 2) and not agree.flipped
    assert agree.unsure_requests == 1  # the second request's labels hold 0.4 < 0.5
    # Both orders say "A": the judge follows the position, not the answer.
    biased = verdict_from(0.8, 0.9, 0.7, 0.9)
    assert biased.preference == pytest.approx(0.55) and biased.flipped
    # A tie in one order is no flip.
    assert not verdict_from(0.5, 1.0, 0.9, 1.0).flipped
    assert flip_share([agree, biased]) == 0.5 and unsure_count([agree, biased]) == 1


def test_identical_answers_are_one_request_so_their_preference_is_exactly_one_half(tokenizer, hf_model, pairs):
    labels = pick_labels(tokenizer)
    seen = []
    score = hf_scorer(hf_model)

    def counting(prompts, labels):
        seen.extend(prompts)
        return score(prompts, labels)

    verdicts = judge_pairs(pairs, tokenizer, labels, counting)
    assert len(seen) == 2 * len(pairs) - 1  # the identical pair's two orders are the same prompt
    assert verdicts[-1].preference == 0.5
    assert verdicts[-1].p_a_test_first == verdicts[-1].p_a_test_second
    # ... and never a flip, though the one prompt's P(A) is not 1/2 (the judge's position bias): the flip share
    # measures verdicts that change with the order, and here there is nothing to change.
    assert verdicts[-1].p_a_test_first != 0.5 and verdicts[-1].same_answers and not verdicts[-1].flipped
    assert not any(v.same_answers for v in verdicts[:-1])


# --- the real backends --------------------------------------------------------------------------------

def _check_verdicts(verdicts: list[Verdict], n_pairs: int) -> None:
    assert len(verdicts) == n_pairs
    for v in verdicts:
        assert 0.0 <= v.preference <= 1.0
        assert 0.0 <= v.p_a_test_first <= 1.0 and 0.0 <= v.p_a_test_second <= 1.0
        assert 0.0 < v.mass_test_first <= 1.0 and 0.0 < v.mass_test_second <= 1.0
    assert verdicts[-1].preference == 0.5  # the identical pair
    # The flip share is the share of real verdicts whose two orders pick different answers.
    by_hand = sum((v.p_a_test_first > 0.5) != (v.p_a_test_second < 0.5) for v in verdicts[:-1]
                  if v.p_a_test_first != 0.5 and v.p_a_test_second != 0.5) / len(verdicts)
    assert flip_share(verdicts) == by_hand


def test_hf_backend_gives_every_pair_a_verdict(tokenizer, hf_model, pairs):
    labels = pick_labels(tokenizer)
    verdicts = judge_pairs(pairs, tokenizer, labels, hf_scorer(hf_model, batch_size=4))
    _check_verdicts(verdicts, len(pairs))
    # Left padding must not change a prompt's probabilities: batch of 4 vs one at a time.
    alone = judge_pairs(pairs, tokenizer, labels, hf_scorer(hf_model, batch_size=1))
    assert [v.preference for v in verdicts] == pytest.approx([v.preference for v in alone], abs=1e-5)
    # The random tiny judge spreads its belief over the whole vocabulary: every request is "unsure".
    assert unsure_count(verdicts) == 2 * len(pairs)


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM
    from tunesweep.judge.prompt import Labels
    from tunesweep.judge.verdict import vllm_scorer

    if __name__ == "__main__":
        checkpoint, job = sys.argv[1], json.loads(open(sys.argv[2]).read())
        llm = LLM(model=checkpoint, dtype="float32", max_model_len=1024, seed=0, enable_chunked_prefill=False,
                  enforce_eager=True, kv_cache_memory_bytes=2**30)
        labels = Labels(**job["labels"])
        print("RESULT" + json.dumps(vllm_scorer(llm)(job["prompts"], labels)), flush=True)
        llm.llm_engine.engine_core.shutdown()
""")


@pytest.mark.slow
def test_vllm_backend_returns_the_raw_label_probabilities_for_every_request(tiny_model_dir, tokenizer, hf_model,
                                                                              pairs, tmp_path):
    """One engine for the module: every distinct prompt of both orders in one call, in a child process (the
    engine's own processes end with it)."""
    labels = pick_labels(tokenizer)
    prompts, returned = [], []

    def through_vllm(batch, labels):
        prompts.extend(batch)
        job = tmp_path / "job.json"
        job.write_text(json.dumps({"prompts": [list(p) for p in batch], "labels": labels.__dict__}))
        script = tmp_path / "judge_vllm.py"
        script.write_text(VLLM_SCRIPT)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(job)], capture_output=True,
                              text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
        returned.extend(tuple(x) for x in json.loads(line[len("RESULT"):]))
        return returned

    verdicts = judge_pairs(pairs, tokenizer, labels, through_vllm)
    _check_verdicts(verdicts, len(pairs))
    # vLLM's label log-probabilities are the full-vocabulary ones (not renormalised over the two labels,
    # not missing outside a top K): they equal transformers' log-softmax of the same prompts.
    hf = hf_scorer(hf_model, batch_size=4)(prompts, labels)
    assert np.allclose(np.array(returned), np.array(hf), atol=2e-3)
    assert unsure_count(verdicts) == 2 * len(pairs)
    # The labels are not the judge's likeliest next tokens: a top-2 `logprobs` request would have missed them.
    import torch

    with torch.no_grad():
        logits = hf_model(torch.tensor([prompts[0]])).logits[0, -1]
    assert not set(labels.ids) <= set(torch.topk(logits, 2).indices.tolist())


# --- statistics -------------------------------------------------------------------------------------

def test_win_rate_is_the_mean_preference_with_ties_counting_half():
    result = win_rate([1.0, 0.0, 0.5, 1.0], resamples=0)
    assert result.value == 0.625 and result.ci_low is None


def test_win_rate_ci_by_hand():
    # Rows [0, 0, 0, 1]: a resample's mean is k/4 with k ~ Binomial(4, 1/4). P(k = 0) = 81/256 > 2.5%, so the
    # lower bound is 0; P(k = 4) = 1/256 < 2.5% < P(k >= 3) = 13/256, so the upper bound is 3/4.
    result = win_rate([0.0, 0.0, 0.0, 1.0], resamples=20000, seed=3)
    assert result.value == 0.25 and (result.ci_low, result.ci_high) == (0.0, 0.75)
    # Rows all alike: nothing to resample away.
    assert win_rate([0.7] * 5, resamples=200).ci_low == pytest.approx(0.7)


def test_win_rate_resamples_the_same_rows_as_the_text_metrics():
    from tunesweep.evaluate.metrics import MeanOfRows, bootstrap_ci
    from tunesweep.evaluate.metrics import bootstrap_indices as scoring_indices

    prefs = np.random.default_rng(5).random(40)
    assert np.array_equal(bootstrap_indices(40, 300, 11), scoring_indices(40, 300, 11))
    result = win_rate(prefs, resamples=300, seed=11)
    assert (result.ci_low, result.ci_high) == bootstrap_ci(MeanOfRows(), prefs, scoring_indices(40, 300, 11))


def test_length_controlled_win_rate_by_hand():
    # Three long answers (+50 characters) preferred at 0.9, one short (-50) at 0.3. Two length values and two
    # coefficients: the fit is exact, s(theta + phi x) = 0.9 and s(theta - phi x) = 0.3, so
    # theta = (logit 0.9 + logit 0.3) / 2 = ln(27 / 7) / 2, and the LC win rate is s(theta).
    r = math.sqrt(27 / 7)
    result = lc_win_rate([0.9, 0.9, 0.9, 0.3], [150, 150, 150, 50], [100] * 4, resamples=0)
    assert result.value == pytest.approx(r / (1 + r), abs=1e-9)
    assert result.value < win_rate([0.9, 0.9, 0.9, 0.3], resamples=0).value  # length won it some
    assert result.length_slope > 0
    # Equal lengths: only the intercept is left, and the LC win rate is the plain one.
    same = lc_win_rate([0.9, 0.2, 0.6], [80] * 3, [80] * 3, resamples=0)
    assert same.value == pytest.approx(np.mean([0.9, 0.2, 0.6]), abs=1e-12)


def test_length_controlled_win_rate_equals_scikit_learn_on_the_same_design():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    for n, bias, slope in ((200, 0.3, 1.2), (60, -0.8, 2.5), (500, 0.0, -0.7)):
        test_len, base_len = rng.integers(20, 600, n), rng.integers(20, 600, n)
        x = length_design(test_len, base_len)[:, 1]
        prefs = 1 / (1 + np.exp(-(bias + slope * x + rng.normal(0, 1, n))))
        ours = lc_win_rate(prefs, test_len, base_len, resamples=200, seed=0)
        # Soft labels as two weighted copies of every row; C = inf: no penalty, as ours.
        fitted = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(
            np.r_[x, x][:, None], np.r_[np.ones(n), np.zeros(n)], sample_weight=np.r_[prefs, 1 - prefs])
        theirs = 1 / (1 + np.exp(-fitted.intercept_[0]))
        assert abs(ours.value - theirs) < 0.005
        assert ours.length_slope == pytest.approx(fitted.coef_[0, 0], abs=1e-3)
        assert ours.ci_low <= ours.value <= ours.ci_high


def test_length_controlled_win_rate_when_one_side_always_wins():
    # The likelihood peaks at infinity: the read-off tends to the limit instead of failing.
    assert lc_win_rate([1.0] * 6, [10, 20, 30, 40, 50, 60], [35] * 6, resamples=50).value > 0.999
    assert lc_win_rate([0.0] * 6, [10, 20, 30, 40, 50, 60], [35] * 6, resamples=50).value < 0.001


# --- evaluation.judge -------------------------------------------------------------------------------

JUDGED = {"name": "t", "models": [{"name": "m", "base": "some/base"}],
          "generation": {"sweep": {"temperature": [0.3]}}}


def _with_judge(**judge) -> dict:
    return {**JUDGED, "evaluation": {"judge": judge}}


def test_judge_config_defaults_and_named_baseline():
    from tunesweep.config import expand_sweep, parse_config

    assert parse_config(JUDGED).evaluation.judge is None  # no section, no judge
    cfg = parse_config(_with_judge(model="judges/tiny"))
    judge = cfg.evaluation.judge
    assert (judge.against, judge.rows, judge.backend) == ("centre", None, "auto")
    named = expand_sweep(cfg.generation)[1].name
    assert parse_config(_with_judge(model="judges/tiny", against=named, rows=20)).evaluation.judge.against == named
    assert parse_config(_with_judge(model="judges/tiny", against="reference")).evaluation.judge.against == "reference"


@pytest.mark.parametrize("judge, expected", [
    ({"model": "judges/tiny", "against": "top_k_7_num_beams_1_temp_0.3"},
     "study.yaml: evaluation.judge.against = 'top_k_7_num_beams_1_temp_0.3' is not centre, reference or a config of the sweep"),
    ({"model": "judges/tiny", "rows": 0}, "evaluation.judge.rows = 0"),
    ({"model": "judges/tiny", "backend": "api"}, "evaluation.judge.backend = 'api'"),
    ({"model": "/local/judge", "revision": "main"}, "applies to a hub id only"),
    ({"against": "centre"}, "evaluation.judge.model"),
    ({"model": "judges/tiny", "temperature": 0.0}, "unknown key 'evaluation.judge.temperature'"),
])
def test_bad_judge_config_is_one_line_naming_the_key(judge, expected):
    from tunesweep.config import parse_config

    with pytest.raises(UserError) as err:
        parse_config(_with_judge(**judge), "study.yaml")
    assert expected in str(err.value) and "\n" not in str(err.value).strip()


def test_a_template_file_replaces_the_prompt_and_the_judgments_identity(tmp_path, tokenizer, hf_model, pairs):
    """evaluation.judge.template: the user's wording reaches the judge, changes the template hash that keys every
    judgment, and a file that is missing or uses unknown or missing fields is one line before any work."""
    from tunesweep.config import parse_config
    from tunesweep.judge.prompt import PAIRWISE_TEMPLATE, check_template
    from tunesweep.judge.stage import judge_template, template_sha256

    text = ("Pick the better reply.\n{instruction}\n{input_block}\nReply {label_a}: {answer_a}\n"
            "Reply {label_b}: {answer_b}\nBetter reply:")
    path = tmp_path / "judge.txt"
    path.write_text(text, encoding="utf-8")
    cfg = parse_config(_with_judge(model="judges/tiny", template=str(path)))
    assert judge_template(cfg) == (text, str(path))
    assert judge_template(parse_config(_with_judge(model="judges/tiny")))[0] == PAIRWISE_TEMPLATE
    assert template_sha256(text) != template_sha256()
    labels = pick_labels(tokenizer)
    prompt = pairwise_text("Name a colour.", "", "red", "blue", labels, text)
    assert prompt.startswith("Pick the better reply.\nName a colour.") and f"Reply {labels.first}: red" in prompt
    ours = judge_pairs(pairs[:3], tokenizer, labels, hf_scorer(hf_model, batch_size=4), text)
    builtin = judge_pairs(pairs[:3], tokenizer, labels, hf_scorer(hf_model, batch_size=4))
    assert [v.p_a_test_first for v in ours] != [v.p_a_test_first for v in builtin]  # another prompt, other verdicts
    for bad, expected in [("{instruction} {answer_a} {answer_b} {label_a}", "no {label_b}"),
                          (text + " {score}", "unknown field(s) {score}"),
                          (text + " {", "not a template str.format can read")]:
        with pytest.raises(UserError) as err:
            check_template(bad, "judge.txt")
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"evaluation\.judge\.template = '.*nowhere\.txt': no such file"):
        parse_config(_with_judge(model="judges/tiny", template=str(tmp_path / "nowhere.txt")), "study.yaml")
