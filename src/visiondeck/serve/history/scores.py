"""How uncertain a stored prediction was: the one definition of its margin and entropy.

Written with every history row (`PredictionRecord` fills them from its `top_k`) and filled
in once for rows of older tables (`PredictionStore.create`), so the review queue
(serve/history/review.py) orders on two plain columns instead of parsing JSON per row.

- margin: top-1 minus top-2 probability. A row that kept only its top class (a client
  that asked `top_k=1`) takes the most the runner-up could have had, min(p1, 1 - p1), so
  its margin is the smallest the truth allows (max(0, 2·p1 - 1)).
- entropy (nats) of the stored probabilities with the rest of the mass (1 - their sum)
  counted as one more outcome: exact when every class was stored, else a lower bound on
  the full distribution's entropy that ranks rows alike whenever the mass outside the
  stored top-k is small, as it is for the default top 3 of a confident model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["uncertainty"]

_TINY = 1e-12


def uncertainty(top_k: Sequence[Any] | None, confidence: float) -> tuple[float, float]:
    """(margin, entropy) of one stored prediction; never raises on an odd `top_k` (entries
    without a probability in [0, 1] are skipped, and `confidence` stands in for none).

    Runs for every prediction the service stores, so the usual shape (a list of dicts
    with float probabilities) takes a short path first."""
    try:
        probabilities = [float(entry["probability"]) for entry in top_k]
        usable = all(0.0 <= p <= 1.0 for p in probabilities)  # False for NaN too
    except (TypeError, KeyError, ValueError, OverflowError):
        usable = False
    if not usable:
        probabilities = _checked(top_k)
    if not probabilities:
        c = float(confidence)
        probabilities = [min(1.0, max(0.0, c)) if math.isfinite(c) else 0.0]
    probabilities.sort(reverse=True)
    first = probabilities[0]
    second = probabilities[1] if len(probabilities) > 1 else min(first, 1.0 - first)
    probabilities.append(1.0 - sum(probabilities))
    entropy = -sum([p * math.log(p) for p in probabilities if p > _TINY])
    return first - second, max(0.0, entropy)


def _checked(top_k: Any) -> list[float]:
    """The probabilities of an odd `top_k` that are numbers in [0, 1]."""
    found = []
    for entry in top_k if isinstance(top_k, list | tuple) else ():
        p = entry.get("probability") if isinstance(entry, dict) else None
        if isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0:
            found.append(float(p))
    return found
