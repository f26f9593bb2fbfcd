"""First turns against later turns: later turns of a skewed question type are thinned to the first turns' answer
shares (nothing else changes), or every turn is weighted toward the first turns' mix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from atp_cli.errors import InputError
from atp_cli.train.data import Sample, first_turn_weights, focused, rebalance_turns, turn_weights


def _sample(i: int, turns: list[tuple[str, str]], kinds: list[str]) -> Sample:
    return Sample(Path(f"{i}.png"), tuple((f"q{k}", a) for k, (_, a) in enumerate(turns)), tuple(kinds))


def _records() -> list[Sample]:
    """100 records whose first turn counts half "one", half "two" and whose 9 later count questions answer "one" 9
    times in 10 (the skew of generated mosaics), each with a later colour question; 20 records that ask colours
    first, in the same shares as the later ones; one record whose second turn has no type."""
    out = []
    for i in range(100):
        first = ("count", "one" if i % 2 else "two")
        later = [("count", "two" if (i * 9 + k) % 10 == 0 else "one") for k in range(9)]
        colour = ("colour", "red" if i % 2 else "blue")
        turns = [first, *later, colour]
        out.append(_sample(i, turns, [kind for kind, _ in turns]))
    for i in range(20):
        turns = [("colour", "red" if i % 2 else "blue"), ("colour", "blue" if i % 2 else "red")]
        out.append(_sample(100 + i, turns, ["colour", "colour"]))
    out.append(_sample(120, [("count", "one"), ("colour", "red")], ["count"]))  # the second turn has no type
    return out


def _later(samples: list[Sample], kind: str) -> Counter:
    return Counter(a for s in samples for k, ((_, a), t) in enumerate(zip(s.turns, s.kinds)) if k and t == kind)


def test_skewed_later_turns_take_the_first_turns_shares():
    before = _records()
    after = rebalance_turns(before, seed=0)
    counts = _later(after, "count")
    assert counts["two"] == _later(before, "count")["two"]  # the under-represented answer keeps every turn
    assert 0.35 < counts["one"] / (counts["one"] + counts["two"]) < 0.65  # was 0.9
    for b, a in zip(before, after):
        assert a.image == b.image and a.turns[0] == b.turns[0] and len(a.turns) == len(a.kinds) + (b is before[-1])


def test_balanced_types_and_untyped_turns_are_kept():
    before = _records()
    after = rebalance_turns(before, seed=0)
    assert _later(after, "colour") == _later(before, "colour")
    assert after[-1] is before[-1]  # a record whose later turn has no type is left whole


def test_thinning_is_seeded():
    assert rebalance_turns(_records(), seed=3) == rebalance_turns(_records(), seed=3)
    assert rebalance_turns(_records(), seed=3) != rebalance_turns(_records(), seed=4)


def test_weights_are_first_turn_share_over_all_turn_share():
    samples = _records()
    weights = first_turn_weights(samples)
    # 121 first turns (50 "count one" + 1 more, 50 "count two", 20 colour) among 1242 typed turns
    n_first, n_all = 121, 100 * 11 + 20 * 2 + 1
    every_one = 51 + 9 * 100 - 90  # a later turn says "two" when k = i % 10 (k < 9): for 90 of the 100 records
    assert weights["count", "one"] == pytest.approx((51 / n_first) / (every_one / n_all))
    assert weights["count", "two"] > 1 > weights["count", "one"]  # later counts say "one" too often


def test_weighted_turns_carry_the_first_turns_mix():
    """Self-normalised: over every typed turn, the weighted share of each (type, answer) is its first-turn share."""
    samples = _records()
    weights = first_turn_weights(samples, cap=float("inf"))
    mass: Counter = Counter()
    for s in samples:
        for w, kind, (_, answer) in zip(turn_weights(s, weights), s.kinds, s.turns):
            mass[kind, answer] += w
    firsts = Counter((s.kinds[0], s.turns[0][1]) for s in samples)
    total_mass, total_first = sum(mass.values()), sum(firsts.values())
    for pair, n in firsts.items():
        assert mass[pair] / total_mass == pytest.approx(n / total_first)


def test_rare_first_answers_are_capped_and_never_first_ones_weigh_nothing():
    samples = [Sample(Path("a.png"), (("q", "hat"), ("q", "red")), ("text", "colour"))] + [
        Sample(Path(f"{i}.png"), (("q", "red"), *(("q", "blue"),) * 9), ("colour",) * 10) for i in range(9)]
    weights = first_turn_weights(samples, cap=3.0)
    assert weights["text", "hat"] == 3.0  # 1/10 of first turns, 1/91 of all: 9.1 uncapped
    assert weights["colour", "blue"] == 0.0  # never a first answer
    assert list(turn_weights(samples[0], weights)) == [3.0, pytest.approx(weights["colour", "red"])]


def test_untyped_turns_weigh_one_and_untyped_data_is_refused():
    untyped = _records()[-1]  # its second turn has no type
    assert turn_weights(untyped, first_turn_weights(_records()))[1] == 1.0
    with pytest.raises(InputError, match="kinds"):
        first_turn_weights([Sample(Path("a.png"), (("q", "a"),))])


def test_focus_multiplies_the_named_types_turns_and_nothing_else():
    samples = _records()
    base = first_turn_weights(samples)
    scaled = focused(base, samples, {"count": 3.0})
    assert scaled.keys() == base.keys()
    for (kind, answer), w in base.items():
        assert scaled[kind, answer] == pytest.approx(w * (3.0 if kind == "count" else 1.0))
    assert focused(base, samples, {}) is base  # no focus: the weights as they were


def test_focus_without_first_turn_weights_starts_from_one_per_turn():
    samples = _records()
    scaled = focused(None, samples, {"colour": 2.0})
    assert focused(None, samples, {}) is None
    record = samples[0]  # nine count turns, then a colour turn
    assert list(turn_weights(record, scaled)) == [1.0] * 10 + [2.0]
    assert turn_weights(samples[-1], scaled)[1] == 1.0  # an untyped turn keeps weight 1


def test_focus_on_an_unknown_type_or_a_negative_factor_is_refused():
    samples = _records()
    with pytest.raises(InputError, match="positon"):
        focused(None, samples, {"positon": 2.0})
    with pytest.raises(InputError, match="finite"):
        focused(None, samples, {"count": -1.0})
