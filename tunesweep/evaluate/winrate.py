"""Win rates from judge preferences: the plain win rate with a bootstrap CI, and AlpacaEval 2's
length-controlled win rate.

The judge stage (tunesweep/judge) writes the preferences; the score stage turns them into these figures with
the text metrics' bootstrap (metrics.bootstrap_indices, 95% percentile interval): fed the same seed and row
count, the judge's win rates resample the same rows as BLEU and ROUGE-L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .metrics import bootstrap_indices, percentile_ci

# Newton steps for the logistic fit; it converges in well under 30 on any real data (quadratic
# convergence). Where the maximum likelihood is at infinity (every preference 0 or 1 and the lengths
# separate them), the steps walk the intercept outwards and the read-off tends to 0 or 1, as the limit does.
NEWTON_STEPS = 50
_LINEAR_CAP = 35.0  # |logit| cap: keeps exp() finite while a degenerate fit walks outwards


@dataclass(frozen=True)
class WinRate:
    value: float  # in [0, 1]
    ci_low: Optional[float]  # None when the bootstrap is off
    ci_high: Optional[float]


def win_rate(preferences: Sequence[float], resamples: int = 1000, seed: int = 0) -> WinRate:
    """The mean preference for the answer under test (a tie counts half), with its 95% percentile bootstrap
    CI over rows (`resamples` = 0: no CI)."""
    p = np.asarray(preferences, dtype=float)
    if not len(p):
        return WinRate(float("nan"), None, None)
    if not resamples:
        return WinRate(float(p.mean()), None, None)
    idx = bootstrap_indices(len(p), resamples, seed)
    return WinRate(float(p.mean()), *percentile_ci(p[idx].mean(axis=1)))


# --- length-controlled win rate ---------------------------------------------------------------------

def length_design(test_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> np.ndarray:
    """(n, 2) design: an intercept column and tanh of the standardised length difference.

    As AlpacaEval 2 does, the difference (test minus baseline, in characters) is divided by its sample
    standard deviation (ddof=1), not centred: zero still means "equally long". Without spread (one row,
    or every difference equal) the length column is all zero and the fit is the intercept alone."""
    delta = np.asarray(test_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    sd = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    column = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    return np.column_stack([np.ones_like(delta), column])


def fit_soft_logistic(design: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coefficients maximising sum_i w_i [t_i log s(x_i b) + (1 - t_i) log(1 - s(x_i b))], s the logistic,
    for every weight vector at once: `weights` is (B, n), the result (B, k). Unpenalised Newton (IRLS).

    Soft targets t in [0, 1] are exactly what two copies of each row (label 1 with weight w t, label 0 with
    weight w (1 - t)) would give an ordinary logistic regression."""
    x = design
    batch, k = weights.shape[0], x.shape[1]
    # Columns with no variation under any weighting would make the Hessian singular: fit without them.
    used = [j for j in range(k) if j == 0 or np.any(x[:, j] != x[0, j])]
    xu = x[:, used]
    coef = np.zeros((batch, len(used)))
    ridge = 1e-12 * np.eye(len(used))
    for _ in range(NEWTON_STEPS):
        eta = np.clip(coef @ xu.T, -_LINEAR_CAP, _LINEAR_CAP)  # (B, n)
        mu = 1.0 / (1.0 + np.exp(-eta))
        grad = (weights * (targets - mu)) @ xu  # (B, k)
        hess = np.einsum("bn,ni,nj->bij", weights * mu * (1 - mu), xu, xu) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        coef = coef + step
        if np.max(np.abs(step)) < 1e-10:
            break
    full = np.zeros((batch, k))
    full[:, used] = coef
    return full


@dataclass(frozen=True)
class LengthControlled:
    value: float  # the win rate at zero length difference, in [0, 1]
    ci_low: Optional[float]
    ci_high: Optional[float]
    length_slope: float  # the coefficient of tanh(standardised length difference)


def lc_win_rate(preferences: Sequence[float], test_lengths: Sequence[float], baseline_lengths: Sequence[float],
                resamples: int = 1000, seed: int = 0) -> LengthControlled:
    """AlpacaEval 2's length-controlled win rate of ONE config (or model) against its baseline.

    The model: logit P(test preferred) = theta + phi * tanh(delta_len / sd(delta_len)), fitted to the soft
    preferences by maximum likelihood; the length-controlled win rate is s(theta), the prediction at zero
    length difference. Fitting each config on its own pairs gives each its own theta (the model term) and
    phi (its length sensitivity), as AlpacaEval fits each model on its own annotations.

    Left out, and why: AlpacaEval's instruction-difficulty term (its values belong to its 805 instructions and
    are downloaded at run time) and its not-gamed-baseline term; it also fits with an L1 penalty chosen by
    5-fold CV, where this fit is unpenalised. The CI is a percentile bootstrap over rows (refitting on each
    resample, the length scale kept from the full sample)."""
    t = np.asarray(preferences, dtype=float)
    if not len(t):
        return LengthControlled(float("nan"), None, None, float("nan"))
    design = length_design(test_lengths, baseline_lengths)
    weights = np.ones((1, len(t)))
    if resamples:
        idx = bootstrap_indices(len(t), resamples, seed)
        # A resample is the full sample with each row weighted by how often it was drawn.
        counts = np.zeros((resamples, len(t)))
        np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
        weights = np.vstack([weights, counts])
    coef = fit_soft_logistic(design, t, weights)
    at_zero = 1.0 / (1.0 + np.exp(-coef[:, 0]))
    low, high = percentile_ci(at_zero[1:]) if resamples else (None, None)
    return LengthControlled(float(at_zero[0]), low, high, float(coef[0, 1]))
