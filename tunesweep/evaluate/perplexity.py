"""Perplexity of reference answers under a checkpoint: exp of the mean NLL over response tokens.

Each record's (summed NLL, tokens) is kept, so a bootstrap over test rows resamples those pairs and
recomputes exp(sum NLL / sum tokens) per resample (`perplexity_resamples`).

The sequence scored is exactly what training sees: `build_prompt(r)` + output + EOS, tokenized
the way TRL's completion-only loss tokenizes it (prompt and prompt+completion tokenized
separately; the completion starts where the two token lists diverge). Only completion tokens,
EOS included, count: the prompt is context, not something the model is asked to predict.
"""

from __future__ import annotations

import math
from typing import Optional

from ..loading import load_for_inference
from ..templates import build_training_pair


def scoring_pair(record: dict, template: str = "alpaca") -> dict:
    """{"prompt", "completion"} for a test row, or for a response record (prompt + reference)."""
    if "instruction" in record:
        return build_training_pair(record, template)
    return {"prompt": record["prompt"], "completion": str(record["reference"]).strip()}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_for_scoring(tokenizer, record: dict, template: str = "alpaca",
                       max_length: Optional[int] = None) -> tuple[list[int], int]:
    """(input_ids, prompt_len): the tokens of prompt + completion + EOS and where the completion starts."""
    pair = scoring_pair(record, template)
    completion = pair["completion"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    prompt_ids = tokenizer(pair["prompt"])["input_ids"]
    full_ids = tokenizer(pair["prompt"] + completion)["input_ids"]
    prompt_len = _common_prefix(prompt_ids, full_ids)
    if max_length is not None and len(full_ids) > max_length:
        # Keep the completion whole where possible: drop the start of the prompt, not the answer.
        cut = len(full_ids) - max_length
        full_ids = full_ids[cut:]
        prompt_len = max(prompt_len - cut, 0)
    return full_ids, prompt_len


def response_nll_rows(model, tokenizer, records: list[dict], template: str = "alpaca", batch_size: int = 8,
                      max_length: Optional[int] = None, progress: bool = True) -> tuple[list[float], list[int]]:
    """Per record, in the order given: (summed NLL in nats, number of scored tokens) of its completion."""
    import torch
    from tqdm.auto import tqdm

    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    encoded = [encode_for_scoring(tokenizer, r, template, max_length) for r in records]
    # Longest first: similar lengths share a batch (less padding), and memory trouble shows at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    row_nll, row_tokens = [0.0] * len(records), [0] * len(records)
    model.eval()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress or len(batches) < 2):
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq, prompt_len = encoded[i]
            n = len(seq)
            ids[row, :n] = torch.tensor(seq)
            attn[row, :n] = 1
            labels[row, prompt_len:n] = torch.tensor(seq[prompt_len:])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        # Position t predicts token t+1.
        shift_logits = logits[:, :-1, :]
        shift_labels = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100,
            reduction="none",
        ).view(shift_labels.shape).sum(dim=1)
        counts = (shift_labels != -100).sum(dim=1)
        for row, i in enumerate(batch):
            row_nll[i] = float(nll[row])
            row_tokens[i] = int(counts[row])
    return row_nll, row_tokens


def corpus_perplexity(checkpoint: str, records: list[dict], template: str = "alpaca", batch_size: int = 8,
                      max_length: Optional[int] = None) -> dict:
    """{"perplexity", "nll", "tokens"}: exp of the mean per-token NLL over the records' responses.

    `records` are test rows (instruction / input / output) or response records (prompt / reference).
    """
    if not records:
        raise ValueError("corpus_perplexity needs at least one record")
    model, tokenizer = load_for_inference(str(checkpoint))
    row_nll, row_tokens = response_nll_rows(model, tokenizer, records, template, batch_size, max_length)
    del model
    tokens = sum(row_tokens)
    mean_nll = sum(row_nll) / tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": tokens, "row_nll": row_nll,
            "row_tokens": row_tokens}


def perplexity_resamples(row_nll, row_tokens, idx) -> "np.ndarray":
    """The corpus perplexity of every bootstrap resample of the test rows: exp(sum NLL / sum tokens)
    over the resampled rows (token-weighted, as the corpus figure is; not a mean of per-row perplexities)."""
    import numpy as np

    rows = np.stack([np.asarray(row_nll, dtype=float), np.asarray(row_tokens, dtype=float)], axis=1)
    counts = np.zeros((len(idx), len(rows)))
    np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1)
    sums = counts @ rows
    return np.exp(sums[:, 0] / sums[:, 1])
