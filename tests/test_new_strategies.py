"""CDPruner, DART and the hybrid: each on its defining property, and their budgets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from atp_cli.errors import InputError
from atp_cli.pruning.base import ModuleInput, is_pre_llm
from atp_cli.pruning.budget import params_for_budget
from atp_cli.pruning.cdpruner import CDPruner, dpp_greedy_map, relevance
from atp_cli.pruning.dart import Dart
from atp_cli.pruning.hybrid import Hybrid
from atp_cli.pruning.registry import make_strategy


def _directions(d: int = 8) -> np.ndarray:
    return np.eye(d)


def test_dpp_prefers_distinct_tokens_over_near_duplicates():
    """Four near-copies of one direction, three other directions less relevant to the question, one irrelevant:
    keeping four, the DPP takes one copy and the three others; ranking by relevance alone takes the four copies."""
    rng = np.random.default_rng(0)
    e = _directions()
    copies = e[0] + 0.01 * rng.standard_normal((4, 8))
    rows = np.concatenate([copies, e[1:4], e[7:8]]).astype(np.float32)
    query = (e[0] + 0.3 * e[1:4].sum(0))[None]  # the copies are the most relevant
    rel = relevance(rows, query)
    assert set(np.argsort(-rel)[:4]) == {0, 1, 2, 3}
    _, idx = CDPruner(4).select(rows, query)
    assert len(set(idx) & {0, 1, 2, 3}) == 1 and {4, 5, 6} <= set(idx)


def test_dpp_follows_the_question_among_equally_diverse_tokens():
    e = _directions()
    rows = e[:4].astype(np.float32)
    for target in range(4):
        _, idx = CDPruner(1).select(rows, e[target][None])
        assert idx.tolist() == [target]


def test_greedy_map_takes_the_largest_log_det_gain_each_step():
    """Against a direct computation: each step adds the item that maximises det of the chosen kernel block."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5))
    kernel = x @ x.T
    chosen: list[int] = []
    for _ in range(4):
        gains = {j: np.linalg.det(kernel[np.ix_(chosen + [j], chosen + [j])]) for j in range(9) if j not in chosen}
        chosen.append(max(gains, key=gains.get))
    assert dpp_greedy_map(kernel, 4).tolist() == sorted(chosen)


def test_dpp_fills_past_the_kernel_rank():
    rows = np.repeat(_directions(3), 2, axis=0)  # rank 3, six rows
    idx = dpp_greedy_map(rows @ rows.T, 5)
    assert len(set(idx)) == 5 and len({i // 2 for i in idx[:3]}) <= 3


def test_cdpruner_refuses_impossible_budgets():
    with pytest.raises(InputError):
        CDPruner(0)
    with pytest.raises(InputError, match="cannot keep"):
        CDPruner(10).select(np.ones((4, 3), np.float32))
    with pytest.raises(InputError, match="theta"):
        CDPruner(2, theta=1.0)


def _view(hidden_v: np.ndarray, hidden_q: np.ndarray) -> ModuleInput:
    nv, nq = len(hidden_v), len(hidden_q)
    return ModuleInput(boundary=2, layer=1, visual_pos=np.arange(10, 10 + nv), query_pos=np.arange(100, 100 + nq),
                       attn_vv=np.zeros((nv, nv)), attn_tv=np.zeros((nq, nv)), visual_origin=10, n_layer=8,
                       hidden_v=hidden_v, hidden_q=hidden_q)


def test_dart_drops_duplicates_of_its_pivot_and_keeps_distinct_tokens():
    """One pivot (the largest norm); six exact duplicates of it and three distinct tokens: keeping four, DART keeps
    the pivot and the three tokens least like it."""
    e = _directions()
    hidden_v = np.concatenate([10 * e[:1], np.repeat(e[:1], 6, axis=0), e[1:4]])
    dart = Dart(k=2, keep_ratio=0.4, n_pivot_visual=1, n_pivot_text=0)
    kept = dart(_view(hidden_v, np.zeros((0, 8)))) - 10
    assert kept.tolist() == [0, 7, 8, 9]


def test_dart_keeps_its_budget_with_question_pivots():
    rng = np.random.default_rng(1)
    view = _view(rng.standard_normal((64, 16)), rng.standard_normal((5, 16)))
    for ratio in (0.1, 0.25, 0.5):
        kept = Dart(keep_ratio=ratio)(view)
        assert len(kept) == round(ratio * 64) and (np.diff(kept) > 0).all()
    with pytest.raises(InputError, match="hidden"):
        Dart()(ModuleInput(2, 1, np.arange(4), np.arange(1), np.zeros((4, 4)), np.zeros((1, 4)), 0, 8))


def test_hybrid_selects_before_and_prunes_inside():
    hybrid = make_strategy("hybrid", 8, 64, keep=20)
    assert isinstance(hybrid, Hybrid) and is_pre_llm(hybrid) and hybrid.boundaries(8)
    rows = np.random.default_rng(2).standard_normal((64, 6)).astype(np.float32)
    _, idx = hybrid.select(rows, rows[:2])
    assert len(idx) == 20 and np.array_equal(idx, CDPruner(20).select(rows, rows[:2])[1])
    assert not is_pre_llm(make_strategy("dart", 8, 64))


def test_budgets_of_the_new_rules():
    assert params_for_budget("cdpruner", 64, 30, 576) == {"keep": 64}
    dart = params_for_budget("dart", 144, 30, 576)
    assert dart["k"] == 2 and abs((2 * 576 + 28 * dart["ratio"] * 576) / 30 - 144) < 1e-6
    with pytest.raises(InputError):
        params_for_budget("dart", 15, 30, 576)  # below what even one unpruned layer costs (19.2)
    with pytest.raises(InputError):
        params_for_budget("cdpruner", 600, 30, 576)


def test_every_pair_of_directions_is_kept_apart():
    """Eight directions, each twice: keeping eight, the DPP takes each direction once."""
    rows = np.repeat(_directions(), 2, axis=0).astype(np.float32)
    _, idx = CDPruner(8).select(rows)
    assert sorted(i // 2 for i in idx) == list(range(8))
    assert all(a // 2 != b // 2 for a, b in itertools.combinations(idx, 2))
