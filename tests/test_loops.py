"""The shared loops: iterative refinement until the clusters stop changing, and EM between two networks."""

from __future__ import annotations

import numpy as np
import pytest

from scgraph_core.loops import alternate, refine_until_stable


def test_refinement_stops_once_two_rounds_agree_and_records_each_round():
    plans = [
        np.array([0, 0, 1, 1, 2, 2]),
        np.array([0, 0, 0, 1, 1, 1]),  # changed: go on
        np.array([1, 1, 1, 0, 0, 0]),  # same partition, other names: ARI 1, stop
        np.array([0, 1, 0, 1, 0, 1]),  # never reached
    ]
    events = []
    seen_states = []

    def round_fn(r, state):
        seen_states.append(state)
        return plans[r], f"graph after round {r + 1}", {"loss": 1.0 / (r + 1)}

    out = refine_until_stable(round_fn, max_rounds=10, min_ari=0.99, emit=events.append)
    assert out.converged and out.n_rounds == 3
    assert seen_states == [None, "graph after round 1", "graph after round 2"]
    assert out.history[0]["ari_previous"] is None
    assert out.history[1]["ari_previous"] < 0.99 and out.history[2]["ari_previous"] == pytest.approx(1.0)
    assert [h["n_clusters"] for h in out.history] == [3, 2, 2]
    assert out.last == "graph after round 3"
    assert [e["round"] for e in events] == [1, 2, 3] and all(e["loop"] == "refine" for e in events)


def test_refinement_gives_up_after_max_rounds_without_converging():
    rng = np.random.default_rng(0)
    out = refine_until_stable(lambda r, s: (rng.integers(0, 4, 200), s, {}), max_rounds=4)
    assert out.n_rounds == 4 and not out.converged
    with pytest.raises(ValueError):
        refine_until_stable(lambda r, s: (np.zeros(3), s, {}), max_rounds=0)


def test_em_alternates_m_then_e_and_hands_each_network_the_others_output():
    calls = []

    def m_step(r, q_out):
        calls.append(("M", r, q_out))
        return f"p{r}"

    def e_step(r, p_out):
        calls.append(("E", r, p_out))
        return f"q{r + 1}"

    out = alternate(m_step, e_step, rounds=3, start="q0", score=lambda r, q, p: {"pair": q + p})
    assert calls == [
        ("M", 0, "q0"),
        ("E", 0, "p0"),
        ("M", 1, "q1"),
        ("E", 1, "p1"),
        ("M", 2, "q2"),
        ("E", 2, "p2"),
    ]
    assert out.last == ("q3", "p2")
    assert [h["pair"] for h in out.history] == ["q1p0", "q2p1", "q3p2"]
    none = alternate(m_step, e_step, rounds=0, start="q0")
    assert none.last == ("q0", None) and none.n_rounds == 0
