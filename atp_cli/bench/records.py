"""A benchmark run kept on disk as it goes: one JSON line per (row, question), so that a run stopped at any point
loses nothing, `--resume` continues it, and runs in chunks over several sessions combine exactly (every figure is
computed from the per-question records alone).

`run.json` holds what the records are of - a digest per question, the model files' digest and each row's strategy
and budget - and a resumed run must match it (it may add questions after the ones it has: `-n 120` resumed with
`-n 600` runs the other 480, and `-n 64` summarises its first 64); `records.jsonl` is only ever appended to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from atp_cli.errors import InputError
from atp_cli.files import atomic_path

HEADER = "run.json"
RECORDS = "records.jsonl"


def questions_digest(rows: list[dict]) -> list[str]:
    """A short digest per question (image, question, answer, type): a run may be resumed with more questions as
    long as the ones it has are the first of them."""
    return [hashlib.sha256(json.dumps([str(r["image_path"]), r["question"], r["answer"], r.get("kind")]).encode())
            .hexdigest()[:16] for r in rows]


def files_digest(*paths: Path) -> str:
    """Names, sizes and first MiB of the model files: a run is never resumed on other weights."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(f"{p.name}:{p.stat().st_size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()


@dataclass
class RunStore:
    """Records of one run in `folder` (None: kept in memory only), by (row key, question index)."""

    folder: Path | None
    header: dict
    done: dict[tuple[str, int], dict] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path, header: dict, resume: bool) -> "RunStore":
        """A new run, or (resume) the run in `folder`, which must be of the same questions, model and rows."""
        folder.mkdir(parents=True, exist_ok=True)
        head, recs = folder / HEADER, folder / RECORDS
        if not resume:
            if recs.is_file() and recs.stat().st_size:
                raise InputError(f"{folder} holds a run already; pass --resume to continue it, or choose another --out")
            with atomic_path(head) as tmp:
                tmp.write_text(json.dumps(header, indent=2, default=str))
            recs.write_text("")
            return cls(folder, header)
        if not head.is_file():
            raise InputError(f"nothing to resume in {folder}: no {HEADER}")
        stored = json.loads(head.read_text())
        for key in ("model", "plans"):
            if json.dumps(stored.get(key), default=str) != json.dumps(header.get(key), default=str):
                raise InputError(f"the run in {folder} is of other {key}; resume it with the same options, "
                                 "or choose another --out")
        had, asked = list(stored.get("questions") or []), list(header.get("questions") or [])
        if asked[: len(had)] != had and had[: len(asked)] != asked:
            raise InputError(f"the run in {folder} is of other questions (a resumed run may add questions after the "
                             "ones it has, or summarise its first ones)")
        if len(asked) > len(had):  # more questions than before: the header says so from now on
            stored["questions"] = asked
            with atomic_path(head) as tmp:
                tmp.write_text(json.dumps(stored, indent=2, default=str))
        store = cls(folder, stored)
        if recs.is_file():
            for line in recs.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill: that question runs again
                store.done[(rec["row"], rec["i"])] = rec
        return store

    def has(self, row: str, i: int) -> bool:
        return (row, i) in self.done

    def add(self, rec: dict) -> None:
        """Append one record (flushed: a kill right after loses nothing written before)."""
        self.done[(rec["row"], rec["i"])] = rec
        if self.folder is None:
            return
        with open(self.folder / RECORDS, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=float) + "\n")
            f.flush()

    def of(self, row: str, n: int) -> list[dict]:
        """The records of `row` for questions 0..n-1, in order; every one must be there."""
        missing = [i for i in range(n) if (row, i) not in self.done]
        if missing:
            raise InputError(f"row {row} lacks {len(missing)} of {n} questions (first: {missing[0]})")
        return [self.done[(row, i)] for i in range(n)]
