"""Metric functions against worked examples and the reference libraries' own output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunesweep.evaluate import metrics
from tunesweep.errors import UserError

EDGE_RESPONSES = ["", "   \n\t ", "これは日本語の応答です。猫が好きです。", "Привет, как дела?",
                  " ".join(["word", "cold", "outside", "weather"] * 1250)]  # the last is 5,000 words


@pytest.fixture(scope="session")
def minilm_bertscore():
    """The stage's BERTScore metric with the offline default model (loaded once per session)."""
    m = metrics.BertScore()
    m.scorer()
    return m


def test_rouge_worked_example():
    ref, hyp = "It is cold outside.", "It is very cold outside"
    (p, r, f), = metrics.rouge_rows([hyp], [ref], "rougeL")
    assert f == pytest.approx(0.8889, abs=1e-4)
    (p1, r1, f1), = metrics.rouge_rows([hyp], [ref], "rouge1")
    assert (p1, r1) == pytest.approx((0.8, 1.0))
    direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, hyp)["rougeL"]
    assert (p, r, f) == (direct.precision, direct.recall, direct.fmeasure)


def test_rouge_reference_is_the_target():
    # Swapping response and reference swaps precision and recall: the order must be reference first.
    (p, r, _), = metrics.rouge_rows(["It is very cold outside"], ["It is cold outside."])
    assert (p, r) == pytest.approx((0.8, 1.0))


def test_bleu_toy_corpus_and_signature():
    hyps = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi", ""]
    refs = ["the cat is on the mat", "the quick brown fox jumps over", "hello there", "nothing here"]
    m = metrics.Bleu()
    want = sacrebleu.corpus_bleu(hyps, [refs])
    assert m.aggregate(m.rows(hyps, refs)) == pytest.approx(want.score / 100, abs=1e-12)
    ref_metric = sacrebleu.BLEU()
    ref_metric.corpus_score(hyps, [refs])
    assert m.signature() == ref_metric.get_signature().format()


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_bleu_resamples_from_summed_statistics_equal_corpus_bleu(alpaca_demo_path):
    recs = json.loads(alpaca_demo_path.read_text())
    refs = [r["output"] for r in recs[:60]]
    hyps = [" ".join(r["output"].split()[::2]) for r in recs[:60]]
    m = metrics.Bleu()
    idx = metrics.bootstrap_indices(len(hyps), 20, seed=3)
    fast = m.aggregate_resamples(m.rows(hyps, refs), idx)
    slow = [sacrebleu.corpus_bleu([hyps[i] for i in k], [[refs[i] for i in k]]).score / 100 for k in idx]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_bootstrap_is_seeded_and_gives_the_percentile_interval():
    a = metrics.bootstrap_indices(50, 100, seed=1)
    assert a.shape == (100, 50) and a.min() >= 0 and a.max() < 50
    assert np.array_equal(a, metrics.bootstrap_indices(50, 100, seed=1))
    assert not np.array_equal(a, metrics.bootstrap_indices(50, 100, seed=2))
    rows = np.linspace(0, 1, 50)
    low, high = metrics.bootstrap_ci(metrics.Rouge(), rows, a)
    resampled = [rows[list(k)].mean() for k in a]  # each replicate: the mean of its drawn rows
    assert (low, high) == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])))
    assert low < rows.mean() < high
    assert metrics.bootstrap_ci(metrics.Rouge(), rows, None) == (None, None)
    # The same indices for two configs: rows shifted by 0.1 shift both bounds by exactly 0.1.
    assert metrics.bootstrap_ci(metrics.Rouge(), rows + 0.1, a) == pytest.approx((low + 0.1, high + 0.1))


def test_bertscore_identical_strings_score_one(minilm_bertscore):
    texts = ["It is cold outside.", "Photosynthesis turns light into chemical energy."]
    f = minilm_bertscore.rows(texts, texts)
    np.testing.assert_allclose(f, 1.0, atol=1e-6)
    assert minilm_bertscore.settings()["num_layers"] == 6


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_edge_responses_score_without_crash(minilm_bertscore):
    ref = "It is cold outside, so wear a warm coat."
    refs = [ref] * len(EDGE_RESPONSES)
    bleu_rows = metrics.Bleu().rows(EDGE_RESPONSES, refs)
    assert bleu_rows.shape == (len(EDGE_RESPONSES), 10)
    assert bleu_rows[0, 0] == 0 and bleu_rows[1, 0] == 0  # no hypothesis tokens
    rouge = metrics.Rouge().rows(EDGE_RESPONSES, refs)
    bert = minilm_bertscore.rows(EDGE_RESPONSES, refs)
    # The documented choice: empty and whitespace-only responses score 0 (bert-score would crash).
    assert bert[0] == 0 and bert[1] == 0 and rouge[0] == 0 and rouge[1] == 0
    assert np.all(np.isfinite(bert)) and np.all((bert[2:] > 0) & (bert[2:] <= 1 + 1e-6))
    assert rouge[2] == 0  # rouge-score keeps only [a-z0-9] tokens: non-Latin text has none
    assert 0 < rouge[4] < 1
    # An empty reference is handled the same way.
    assert minilm_bertscore.rows(["something"], [" "]).tolist() == [0.0]


def test_bertscore_local_model_needs_num_layers(tmp_path):
    with pytest.raises(UserError, match="num_layers"):
        metrics.BertScore(model=str(tmp_path)).settings()


# A real pair where bert-score's result depends on its batch neighbours: a reference token whose best
# cosine with every response token is negative loses to the 0 that padding scores.
NEIGHBOUR_HYP = "The report approved by manager."
NEIGHBOUR_REF = ('The root of the word "ambiguous" is "ambi", which is derived from the Latin word "ambiguus", '
                 'meaning "doubtful" or "uncertain". This root is often used to mean "both" or "two" (indicating '
                 'duality or having two aspects) in English words.')
LONG_HYP = ("A much longer response that goes on and on about many unrelated things, with plenty of words to pad "
            "the batch well beyond the first one, and then some more words.")


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_bertscore_of_a_config_does_not_depend_on_the_configs_beside_it(minilm_bertscore):
    scorer = minilm_bertscore.scorer()
    alone = float(scorer.score([NEIGHBOUR_HYP], [NEIGHBOUR_REF])[2][0])
    beside = float(scorer.score([NEIGHBOUR_HYP, LONG_HYP], [NEIGHBOUR_REF] * 2)[2][0])
    assert abs(alone - beside) > 1e-5  # bert-score itself: the neighbour changes the score
    ours = minilm_bertscore.rows([NEIGHBOUR_HYP, LONG_HYP], [NEIGHBOUR_REF] * 2, groups=[1, 1])
    assert ours[0] == pytest.approx(alone, abs=1e-6)


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_bertscore_blocks_equal_separate_calls(minilm_bertscore, alpaca_demo_path):
    recs = [r for r in json.loads(alpaca_demo_path.read_text()) if len(r["output"].split()) <= 30]
    refs = [r["output"] for r in recs[:14]]
    hyps = [r["output"] for r in recs[14:28]]
    hyps[6] = "   "  # an empty response inside a block shifts nothing
    small = metrics.BertScore(batch_size=4, _scorer=minilm_bertscore.scorer())
    blocks = [3, 5, 6]  # 1, 3 and 2 filler pairs top them up to whole batches of 4
    got = small.rows(hyps, refs, groups=blocks)
    assert small.calls == 1
    start = 0
    for size in blocks:
        h, r = hyps[start:start + size], refs[start:start + size]
        keep = [i for i in range(size) if h[i].strip()]
        want = np.zeros(size)
        want[keep] = small.scorer().score([h[i] for i in keep], [r[i] for i in keep], batch_size=4)[2].numpy()
        np.testing.assert_allclose(got[start:start + size], want, rtol=0, atol=1e-6)
        start += size
    assert got[6] == 0


def test_rouge_repeated_pairs_keep_their_place_and_scores():
    hyps = ["It is very cold outside", "Warm today", "It is very cold outside", ""]
    refs = ["It is cold outside.", "It is warm today.", "It is cold outside.", "Anything."]
    got = metrics.rouge_rows(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [[s.precision, s.recall, s.fmeasure] for s in (scorer.score(r, h)["rougeL"] for h, r in zip(hyps, refs))]
    assert got.tolist() == want


def test_a_pickled_bertscore_leaves_its_loaded_scorer_behind():
    """A Ray scoring task gets the metric pickled: it must load its own BERTScorer, not carry the driver's."""
    import pickle

    from tunesweep.evaluate.metrics import BertScore

    metric = BertScore(model=None, num_layers=6, batch_size=8)
    metric._scorer = object()  # as if loaded here
    copy = pickle.loads(pickle.dumps(metric))
    assert copy._scorer is None and metric._scorer is not None
    assert (copy.model, copy.num_layers, copy.batch_size) == (None, 6, 8)
