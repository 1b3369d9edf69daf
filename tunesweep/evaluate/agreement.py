"""Agreement between human raters: pairwise exact agreement, and Krippendorff's alpha (the
`krippendorff` package) for ratings with any number of raters per item and missing ones.

Both take `units`: per item, the ratings it received (one per rater who rated it).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Optional, Sequence

import numpy as np


def pairwise_exact_agreement(units: Iterable[Sequence[float]]) -> Optional[float]:
    """Share of rater pairs that gave the same rating to the same item, pooled over all pairs.

    Items with one rating have no pairs. None when there is no pair at all.
    """
    agree = pairs = 0
    for ratings in units:
        for a, b in itertools.combinations(ratings, 2):
            pairs += 1
            agree += a == b
    return agree / pairs if pairs else None


def krippendorff_alpha(units: Iterable[Sequence[float]], level: str = "interval") -> Optional[float]:
    """Krippendorff's alpha at `level` ("nominal", "ordinal", "interval" or "ratio").

    None when it is undefined: no item has two ratings, or every rating is the same value.
    The value domain is the set of observed values (an unobserved scale point changes nothing).
    """
    import krippendorff

    pairable = [list(u) for u in units if len(u) >= 2]
    domain = sorted({v for u in pairable for v in u})
    if len(domain) < 2:
        return None
    index = {v: i for i, v in enumerate(domain)}
    counts = np.zeros((len(pairable), len(domain)))
    for row, unit in enumerate(pairable):
        for v in unit:
            counts[row, index[v]] += 1
    return float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))
