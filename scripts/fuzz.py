#!/usr/bin/env python3
"""The long fuzzing run: every search of tests/fuzzing.py with many cases, published in docs/FUZZING.md.

  python scripts/fuzz.py --cases 2500          # 2500 per target, 4 targets: 10,000 cases (about 25 minutes)
  python scripts/fuzz.py --cases 200 --out /tmp/FUZZING.md

The searches are seeded (hypothesis, derandomize), so a run is reproducible with the same --cases. A failure
prints hypothesis's minimal falsifying example and exits non-zero; nothing is published then.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2500, help="cases per target")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "FUZZING.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from atp_cli import cpu
    from atp_cli.bench.report import commit, write_atomic

    env = dict(os.environ, ATP_FUZZ_EXAMPLES=str(args.cases))
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_fuzz.py"]
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    outcomes = {}
    for match in re.finditer(r"fuzz (.+?): (\{.*?\})", done.stdout):  # pytest's progress dots may precede a line
        outcomes[match.group(1)] = ast.literal_eval(match.group(2))
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(summary)
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
        raise SystemExit(done.returncode)
    rows = []
    for target, counts in outcomes.items():
        n = sum(v for k, v in counts.items() if k in ("refused", "accepted", "passed"))  # each case once
        detail = ", ".join(f"{k} {v}" for k, v in counts.items())
        rows.append(f"| {target} | {n} | {detail} |")
    text = "\n".join([
        "# Fuzzing",
        "",
        "Seeded hypothesis searches (`tests/fuzzing.py`) over what atp reads from users: mutated `atp.*` keys and",
        "tensors, mutated mmproj keys and tensors (every file the check passes is then opened by libmtmd and encodes",
        "an image in a child process), mutated llava-hf `config.json` / `preprocessor_config.json`, and random CLI",
        "option values. The property: no crash, no traceback, no silent acceptance - a case either passes every check",
        "(and then works) or is refused with an `AtpError` (one `error:` line and exit code 2 on the CLI).",
        "",
        f"Command: `python scripts/fuzz.py --cases {args.cases}` - {summary}, {seconds / 60:.1f} min, "
        f"commit {commit()}, {datetime.date.today().isoformat()}, {cpu.describe()}.",
        "",
        "| target | cases | outcomes |",
        "|---|---|---|",
        *rows,
        "",
        "Outcomes: `refused` - an AtpError named what is wrong; `accepted` / `passed` - every check held. For the",
        "mmproj, `loaded by mtmd` counts the passed files that libmtmd opened and that encoded an image; the other",
        "passed files libmtmd itself refused with an error (its own key checks), none crashed it. The CLI cases use a",
        "model folder that does not exist, so every one ends in an error line; what is checked is that it is one",
        "`error:` line with exit code 2, never a traceback.",
        "",
        "The same searches run with 40 cases per target in the test suite (`tests/test_fuzz.py`).",
        "",
    ])
    write_atomic(args.out, text)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
