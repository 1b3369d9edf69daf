"""Verdicts from the judge's next-token probabilities of the two answer labels.

Every pair (answer under test vs baseline answer to the same instruction) is asked in both orders:
- order 1 shows the test answer as label 1 (A) and the baseline as label 2 (B);
- order 2 shows the baseline as A and the test answer as B.
For each request the judge's raw next-token log-probabilities (softmax over the WHOLE vocabulary, no
sampling, no restriction) of the two labels give
- p_a = P(A) / (P(A) + P(B)): the label probability normalised over the two labels, so every request
  yields a verdict in [0, 1];
- mass = P(A) + P(B): how much of the judge's belief the labels hold; below UNSURE_MASS the request is
  counted as "unsure" (the judge wanted to say something else).

The preference for the test answer averages the two orders:
    preference = (p_a(order 1) + (1 - p_a(order 2))) / 2, computed as 0.5 + (p_a(order 1) - p_a(order 2)) / 2.
Identical answers make the two orders the SAME prompt; prompts are de-duplicated before they reach the
backend, so both orders read one request's p_a and the preference is exactly 0.5 (by construction, not
by the backend being deterministic across batches or prefix-cache hits).

The verdict flips with the order (position bias) when each order has a winner and they differ: order 1
picks the test answer iff p_a(order 1) > 0.5, order 2 iff p_a(order 2) < 0.5.

Backends (one small function each, both returning the two labels' raw log-probabilities per prompt):
- vLLM: `SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=[A, B])`. The installed vLLM
  (v1 sampler, `logprobs_mode="raw_logprobs"`, the default) gathers these ids from the log-softmax of the
  unprocessed logits, before any allowed-token mask or penalty, so both labels always come back with
  their raw probabilities in one call (a top-K `logprobs=K` request would miss a label outside the top K;
  `allowed_token_ids` changes sampling, not the returned raw logprobs).
- hf: a transformers forward pass, log-softmax (float32) of the last position's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UserError
from .prompt import PAIRWISE_TEMPLATE, Labels, pairwise_text, prompt_token_ids

UNSURE_MASS = 0.5  # the two labels together below this probability: the request is "unsure"

# (prompts as token ids, labels) -> one (logprob of label A, logprob of label B) per prompt
Scorer = Callable[[Sequence[Sequence[int]], Labels], list]


@dataclass(frozen=True)
class Pair:
    """One comparison: the answer under test and the baseline answer to the same instruction."""

    instruction: str
    input: str
    answer: str
    baseline: str


@dataclass(frozen=True)
class Verdict:
    """Both orders of one pair, and the averaged preference for the answer under test."""

    p_a_test_first: float  # normalised P(A) with the test answer shown as A
    p_a_test_second: float  # normalised P(A) with the baseline shown as A
    mass_test_first: float  # P(A) + P(B), raw, in each order
    mass_test_second: float
    preference: float  # in [0, 1]; 0.5 = no preference
    # The two answers are the same text: both orders are one prompt, a tie whatever the judge's position bias.
    same_answers: bool = False

    @property
    def flipped(self) -> bool:
        if self.same_answers:
            # One prompt in both orders: "A" both times is the same answer twice, not a verdict that flips.
            return False
        first = _sign(self.p_a_test_first - 0.5)  # +1: order 1 picks the test answer
        second = _sign(0.5 - self.p_a_test_second)  # +1: order 2 picks the test answer
        return first * second < 0

    @property
    def unsure_requests(self) -> int:
        return int(self.mass_test_first < UNSURE_MASS) + int(self.mass_test_second < UNSURE_MASS)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def normalised(logprob_a: float, logprob_b: float) -> tuple[float, float]:
    """(P(A) / (P(A) + P(B)), P(A) + P(B)) from the two raw log-probabilities, without overflow."""
    if logprob_a == -math.inf and logprob_b == -math.inf:
        return 0.5, 0.0
    p_a = 1.0 / (1.0 + math.exp(logprob_b - logprob_a)) if logprob_b - logprob_a < 700 else 0.0
    return p_a, math.exp(logprob_a) + math.exp(logprob_b)


def verdict_from(p_a_test_first: float, mass_first: float, p_a_test_second: float, mass_second: float,
                 same_answers: bool = False) -> Verdict:
    preference = 0.5 + (p_a_test_first - p_a_test_second) / 2
    return Verdict(p_a_test_first, p_a_test_second, mass_first, mass_second, min(1.0, max(0.0, preference)),
                   same_answers)


def judge_pairs(pairs: Sequence[Pair], tokenizer, labels: Labels, scorer: Scorer,
                template: str = PAIRWISE_TEMPLATE) -> list[Verdict]:
    """One verdict per pair; every distinct prompt of both orders goes to `scorer` in one call."""
    orders = []
    distinct: dict[tuple[int, ...], int] = {}
    for pair in pairs:
        ends = []
        for a, b in ((pair.answer, pair.baseline), (pair.baseline, pair.answer)):
            ids = tuple(prompt_token_ids(tokenizer, pairwise_text(pair.instruction, pair.input, a, b, labels,
                                                                   template)))
            ends.append(distinct.setdefault(ids, len(distinct)))
        orders.append(ends)
    scored = scorer([list(ids) for ids in distinct], labels) if distinct else []
    if len(scored) != len(distinct):
        raise RuntimeError(f"the judge backend returned {len(scored)} results for {len(distinct)} prompts")
    probs = [normalised(la, lb) for la, lb in scored]
    return [verdict_from(*probs[first], *probs[second], same_answers=first == second) for first, second in orders]


def flip_share(verdicts: Sequence[Verdict]) -> float:
    """The share of pairs whose verdict flips with the order (NaN without pairs)."""
    return sum(v.flipped for v in verdicts) / len(verdicts) if verdicts else float("nan")


def unsure_count(verdicts: Sequence[Verdict]) -> int:
    """Requests (two per pair) whose labels held under UNSURE_MASS of the probability together."""
    return sum(v.unsure_requests for v in verdicts)


# --- backends ---------------------------------------------------------------------------------------

def check_fits(prompts: Sequence[Sequence[int]], limit: int, judge: str = "judge") -> None:
    """A prompt longer than the judge's context cannot be judged: name the longest one."""
    longest = max((len(p) for p in prompts), default=0)
    if longest >= limit:
        raise UserError(f"{judge}: a judge prompt is {longest} tokens, over the judge's context of {limit}; "
                        "raise evaluation.judge's max_model_len, judge fewer or shorter rows, or pick a judge "
                        "with a longer context")


def vllm_scorer(llm) -> Scorer:
    """The labels' raw log-probabilities through a vLLM engine (one `generate` call for all prompts)."""

    def score(prompts: Sequence[Sequence[int]], labels: Labels) -> list:
        from vllm import SamplingParams

        config = llm.llm_engine.model_config
        if getattr(config, "logprobs_mode", "raw_logprobs") != "raw_logprobs":
            raise RuntimeError(f"the judge engine returns {config.logprobs_mode}; the verdicts need raw_logprobs")
        check_fits(prompts, config.max_model_len)
        try:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=labels.ids, detokenize=False)
        except TypeError:  # an older vLLM: top-K logprobs only, which can miss a label
            from vllm import __version__

            raise UserError(f"the judge needs SamplingParams(logprob_token_ids=...), which vLLM {__version__} lacks; "
                            "upgrade vllm or set evaluation.judge.backend: hf") from None
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        out = []
        for o in outputs:
            step = o.outputs[0].logprobs[0]  # {token id: Logprob} of the one generated position
            out.append((float(step[labels.first_id].logprob), float(step[labels.second_id].logprob)))
        return out

    return score


def hf_scorer(model, batch_size: int = 16) -> Scorer:
    """The labels' raw log-probabilities from a transformers forward pass (left-padded batches)."""

    def score(prompts: Sequence[Sequence[int]], labels: Labels) -> list:
        import torch

        limit = getattr(model.config, "max_position_embeddings", None)
        if limit:
            check_fits(prompts, limit + 1)  # the last position predicts the label: no new token is added
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(batch):
                ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
                mask[i, width - len(p):] = 1
            # Left padding: positions count from each prompt's first real token, as in a lone forward pass.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device)).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, labels.ids].cpu().tolist()
            out.extend((a, b) for a, b in logprobs)
        return out

    return score
