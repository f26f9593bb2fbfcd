"""Question rows from LLaVA-format splits: the first question of each record, or several spread over its turns."""

from __future__ import annotations

import json

from atp_cli.evaluation import load_split, load_turns


def _split(tmp_path):
    records = [
        {"image": "a.png", "kind": "colour", "kinds": ["colour", "count", "position", "text"],
         "conversations": [m for i in range(4) for m in ({"from": "human", "value": ("<image>\n" if i == 0 else "") + f"q{i}"},
                                                          {"from": "gpt", "value": f"a{i}"})]},
        {"image": "b.png", "conversations": [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "x"}]},
    ]
    path = tmp_path / "split.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_turns_are_spread_over_the_record_and_keep_their_own_type(tmp_path):
    rows = load_turns(_split(tmp_path), 2)
    assert [(r["question"], r["answer"], r["kind"]) for r in rows] == [
        ("q0", "a0", "colour"), ("q2", "a2", "position"), ("what?", "x", "all")]
    assert rows[0]["image_path"] == tmp_path / "a.png"
    assert [r["question"] for r in load_turns(_split(tmp_path), 9)] == ["q0", "q1", "q2", "q3", "what?"]


def test_split_rows_are_first_questions(tmp_path):
    assert [r["question"] for r in load_split(_split(tmp_path))] == ["q0", "what?"]
    assert len(load_split(_split(tmp_path), limit=1)) == 1
