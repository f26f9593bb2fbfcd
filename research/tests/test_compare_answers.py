"""research/compare_answers.py: two bench rows compared question by question, over one block or several."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.compare_answers import answered


def _block(tmp_path, name: str, answers: list[str]):
    """A one-turn split whose every answer is 'yes', and a bench file whose rows 'a' and 'b' answered it."""
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"image": f"{name}{i}.png", "kind": "relation", "conversations": [
        {"from": "human", "value": "<image>\nIs it left?"}, {"from": "gpt", "value": "yes"}]}) + "\n"
        for i in range(len(answers))))
    bench = tmp_path / f"{name}.json"
    bench.write_text(json.dumps({"rows": [{"strategy": "a", "n": len(answers), "answers": answers},
                                          {"strategy": "b", "n": len(answers), "answers": ["yes"] * len(answers)}]}))
    return data, bench


def test_blocks_join_in_order_with_their_own_questions(tmp_path):
    d1, b1 = _block(tmp_path, "one", ["yes", "no"])
    d2, b2 = _block(tmp_path, "two", ["no", "no", "yes"])
    questions, ours, theirs = answered([d1, d2], f"{b1},{b2}:a", f"{b1},{b2}:b")
    names = [Path(q["image_path"]).name for q in questions]
    assert names == ["one0.png", "one1.png", "two0.png", "two1.png", "two2.png"]
    assert ours == ["yes", "no", "no", "no", "yes"] and theirs == ["yes"] * 5


def test_a_row_needs_one_run_per_block_and_its_strategy(tmp_path):
    d1, b1 = _block(tmp_path, "one", ["yes"])
    d2, b2 = _block(tmp_path, "two", ["no"])
    with pytest.raises(SystemExit, match="one per block"):
        answered([d1, d2], f"{b1}:a", f"{b1},{b2}:b")
    with pytest.raises(SystemExit, match="no row 'c'"):
        answered([d1], f"{b1}:c", f"{b1}:b")
