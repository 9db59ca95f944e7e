"""Training loops above single stages (MODELS.md 3 and 6.1), shared by the models that need them.

:func:`refine_until_stable` repeats a round (train, rebuild the cell graph, cluster) until the clusters
stop changing: scGNN's iterative refinement. :func:`alternate` runs expectation-maximisation between two
networks, each trained on the other's pseudo-labels plus the labelled cells: scBiGNN. Each round is
reported as a ``{"kind": "round", ...}`` event, so the app's Training page and the run's events show
the loop the same way whatever the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import clustering_metrics

Emit = Callable[[dict], None]


@dataclass
class Rounds:
    """What a loop did: one record per round, whether it converged, and the last round's value."""

    history: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = False
    last: Any = None

    @property
    def n_rounds(self) -> int:
        return len(self.history)


def refine_until_stable(
    round_fn: Callable[[int, Any], tuple[np.ndarray, Any, dict[str, Any]]],
    *,
    max_rounds: int = 10,
    min_ari: float = 0.99,
    emit: Emit | None = None,
) -> Rounds:
    """Run ``round_fn(r, state)`` for r = 0, 1, ... until two consecutive rounds' labels agree (ARI above
    ``min_ari``) or ``max_rounds`` rounds have run.

    ``round_fn`` returns (labels, state for the next round, numbers to record); the first round gets
    ``state=None``. The record of each round holds those numbers, the cluster count and the ARI with the
    previous round's labels (None for the first round)."""
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    out = Rounds()
    previous: np.ndarray | None = None
    state: Any = None
    for r in range(max_rounds):
        labels, state, numbers = round_fn(r, state)
        labels = np.asarray(labels)
        ari = None if previous is None else float(clustering_metrics(previous, labels)["ari"])
        record = {"round": r + 1, "n_clusters": int(np.unique(labels[labels >= 0]).size), "ari_previous": ari}
        record.update(numbers)
        out.history.append(record)
        out.last = state
        if emit is not None:
            emit({"kind": "round", "loop": "refine", **record})
        if ari is not None and ari > min_ari:
            out.converged = True
            break
        previous = labels
    return out


def alternate(
    m_step: Callable[[int, Any], Any],
    e_step: Callable[[int, Any], Any],
    *,
    rounds: int,
    start: Any,
    score: Callable[[int, Any, Any], dict[str, Any]] | None = None,
    emit: Emit | None = None,
) -> Rounds:
    """Expectation-maximisation between two networks for ``rounds`` rounds.

    ``start`` is the first network's output after pre-training (e.g. q_phi's class probabilities). Each
    round runs ``m_step(r, q_out)`` -> the second network's output (p_theta trained on the labelled cells
    and q's pseudo-labels), then ``e_step(r, p_out)`` -> the first network's new output (q_phi trained on
    p's pseudo-labels and the labelled cells). ``score(r, q_out, p_out)`` adds numbers to the round's
    record (e.g. held-out accuracy of both). ``last`` is (q_out, p_out) of the final round."""
    if rounds < 0:
        raise ValueError("rounds must be at least 0")
    out = Rounds(last=(start, None))
    q_out, p_out = start, None
    for r in range(rounds):
        p_out = m_step(r, q_out)
        q_out = e_step(r, p_out)
        record: dict[str, Any] = {"round": r + 1}
        if score is not None:
            record.update(score(r, q_out, p_out))
        out.history.append(record)
        out.last = (q_out, p_out)
        if emit is not None:
            emit({"kind": "round", "loop": "em", **record})
    out.converged = True
    return out
