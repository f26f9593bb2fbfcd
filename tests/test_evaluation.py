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
    for name in ("a.png", "b.png"):  # the images must exist: the split is checked before any model work
        (tmp_path / name).write_bytes(b"")
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


def test_a_malformed_file_or_a_missing_image_is_refused_before_any_model_work(tmp_path):
    import json

    import pytest

    from atp_cli.errors import InputError
    from atp_cli.evaluation import load_split

    data = tmp_path / "q.jsonl"
    data.write_text("{not json\n")
    with pytest.raises(InputError, match="neither a JSON list nor JSONL"):
        load_split(data)
    data.write_text("")
    with pytest.raises(InputError, match="holds no records"):
        load_split(data)
    data.write_text(json.dumps({"image": "a.png", "conversations": [{"from": "human", "value": "q"}]}) + "\n")
    with pytest.raises(InputError, match="human/gpt pair"):
        load_split(data)
    record = {"image": "missing.png", "kind": "colour",
              "conversations": [{"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "a1"},
                                {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}
    data.write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="missing.png not found"):
        load_split(data)
    (tmp_path / "missing.png").write_bytes(b"png")
    from atp_cli.evaluation import load_turns

    rows = load_turns(data, 2)
    assert [(r["question"], r["answer"], r["kind"]) for r in rows] == [("q1", "a1", "colour"), ("q2", "a2", "colour")]
