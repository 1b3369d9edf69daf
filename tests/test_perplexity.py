"""corpus_perplexity: response tokens only (prompt masked, EOS included), as TRL trains on them."""

from __future__ import annotations

import math

import pytest
import torch

from tunesweep.data.builtin import generate_records
from tunesweep.evaluate.perplexity import corpus_perplexity, encode_for_scoring
from tunesweep.loading import load_for_inference
from tunesweep.templates import build_prompt, build_training_pair


@pytest.fixture(scope="module")
def records():
    recs = generate_records(12, seed=3)
    recs[0] = {**recs[0], "input": ""}  # a row without input uses the other template branch
    return recs


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_worked_example_uniform_model_has_perplexity_equal_to_vocab_size(tiny_model_dir, tmp_path, records):
    # A model whose logits are all zero predicts the uniform distribution over V tokens:
    # every token costs ln V nats, so perplexity is exactly V whatever the text.
    model, tokenizer = load_for_inference(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(tmp_path / "uniform")
    tokenizer.save_pretrained(tmp_path / "uniform")
    vocab = model.config.vocab_size
    out = corpus_perplexity(str(tmp_path / "uniform"), records, batch_size=5)
    assert out["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert out["nll"] == pytest.approx(math.log(vocab), rel=1e-6)


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_equals_transformers_own_loss_row_by_row_and_ignores_batching(tiny_model_dir, records):
    model, tokenizer = load_for_inference(str(tiny_model_dir))
    total, count, per_row = 0.0, 0, []
    for rec in records:
        pair = build_training_pair(rec)
        prompt_ids = tokenizer(pair["prompt"])["input_ids"]
        ids = tokenizer(pair["prompt"] + pair["completion"] + tokenizer.eos_token)["input_ids"]
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        n = len(ids) - len(prompt_ids)
        total += float(loss) * n
        count += n
        per_row.append((float(loss) * n, n))
    one = corpus_perplexity(str(tiny_model_dir), records, batch_size=1)
    batched = corpus_perplexity(str(tiny_model_dir), records, batch_size=5)
    assert one["tokens"] == batched["tokens"] == count
    assert one["nll"] == pytest.approx(total / count, rel=1e-5)
    assert batched["nll"] == pytest.approx(one["nll"], rel=1e-5)
    assert batched["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # Per row, in the records' order (batches are sorted by length): what the bootstrap resamples.
    assert batched["row_tokens"] == [n for _, n in per_row]
    assert batched["row_nll"] == pytest.approx([nll for nll, _ in per_row], rel=1e-5)


def test_perplexity_resamples_on_a_worked_example():
    """Rows (NLL, tokens) = (1, 1), (4, 2), (9, 3): a resample's perplexity is exp(sum NLL / sum tokens),
    token-weighted, not the mean of per-row perplexities."""
    import numpy as np

    from tunesweep.evaluate.perplexity import perplexity_resamples

    idx = np.array([[0, 0, 1], [2, 2, 2], [0, 1, 2]])
    got = perplexity_resamples([1.0, 4.0, 9.0], [1, 2, 3], idx)
    assert got == pytest.approx([math.exp(6 / 4), math.exp(27 / 9), math.exp(14 / 6)])


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_scores_exactly_the_tokens_trl_trains_on(tiny_model_dir, records, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_for_inference(str(tiny_model_dir))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], bf16=False, gradient_checkpointing=False,
                     completion_only_loss=True, max_length=512, max_steps=1)
    pairs = [build_training_pair(r) for r in records]
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    for rec, row in zip(records, trainer.train_dataset):
        ids, prompt_len = encode_for_scoring(tokenizer, rec)
        assert ids == row["input_ids"]
        # TRL folds its completion mask into labels: -100 where the loss ignores a token.
        assert row["labels"] == [-100] * prompt_len + ids[prompt_len:]
        assert ids[-1] == tokenizer.eos_token_id  # EOS is scored, as it is trained


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_response_records_score_like_test_rows(tiny_model_dir, records):
    responses = [{"prompt": build_prompt(r), "reference": r["output"]} for r in records]
    a = corpus_perplexity(str(tiny_model_dir), records)
    b = corpus_perplexity(str(tiny_model_dir), responses)
    assert a == b


def test_max_length_keeps_the_answer_and_cuts_the_prompt(tiny_model_dir, records):
    _, tokenizer = load_for_inference(str(tiny_model_dir))
    full, prompt_len = encode_for_scoring(tokenizer, records[1])
    cut, cut_prompt_len = encode_for_scoring(tokenizer, records[1], max_length=len(full) - 5)
    assert cut == full[5:]
    assert cut_prompt_len == prompt_len - 5


def test_no_records_is_an_error(tiny_model_dir):
    with pytest.raises(ValueError):
        corpus_perplexity(str(tiny_model_dir), [])
