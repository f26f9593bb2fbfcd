"""How a split's answers are spread over first and later turns, per question type, and what rebalancing keeps.

  python scripts/turn_answers.py /tmp/atp-ml/data/train.jsonl --seed 1

Generated layouts are drawn for a record's first question, so a type's later answers can differ from its first
ones (docs/TRAINING.md, "First questions and later questions"). Per type: first and later turns, the share of the
most common later answer in each, their total-variation distance, and the later turns `rebalance_turns` keeps
with --seed (stage 2 uses the script's seed + 1).
"""

from __future__ import annotations

import argparse

from atp_cli.train.data import answer_shares, load_samples, rebalance_turns, skew


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="LLaVA-format JSONL with per-turn question types (generated splits have them)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    samples = load_samples(args.data)
    kept = rebalance_turns(samples, args.seed)
    firsts, laters, kept_later = (answer_shares(samples, True), answer_shares(samples, False),
                                  answer_shares(kept, False))
    for kind in sorted(laters):
        first, later = firsts.get(kind), laters[kind]
        n_later, top = sum(later.values()), later.most_common(1)[0][0]
        line = f"{kind}: later {n_later} ({top!r} {later[top] / n_later:.0%})"
        if first:
            n_first = sum(first.values())
            line += f", first {n_first} ({top!r} {first[top] / n_first:.0%}), distance {skew(first, later):.2f}"
        print(f"{line}, later kept {sum(kept_later.get(kind, {}).values())}")
    print(f"questions kept: {sum(len(s.turns) for s in kept)} of {sum(len(s.turns) for s in samples)}")


if __name__ == "__main__":
    main()
