"""Later turns of a skewed question type are thinned to the first turns' answer shares, nothing else changes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from atp_cli.train.data import Sample, rebalance_turns


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
