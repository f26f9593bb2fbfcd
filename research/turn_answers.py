"""How a split's answers are spread over first and later turns, per question type, and what rebalancing keeps.

  python research/turn_answers.py /tmp/atp-ml/data/train.jsonl --seed 1

Generated layouts are drawn for a record's first question, so a type's later answers can differ from its first
ones (docs/TRAINING.md, "First questions and later questions"). Per type: its share of all questions and of first
questions (the mix the test asks), then for types asked again the share of the most common later answer among later
and first turns, their total-variation distance, and the later turns `rebalance_turns` keeps with --seed (stage 2
uses the script's seed + 1).
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
    n_all, n_records = sum(len(s.turns) for s in samples), len(samples)
    for kind in sorted(set(firsts) | set(laters)):
        first, later = firsts.get(kind), laters.get(kind)
        n_first = sum(first.values()) if first else 0
        asked = n_first + (sum(later.values()) if later else 0)
        line = (f"{kind}: {asked} of all {n_all} questions ({asked / n_all:.1%}), {n_first} of {n_records} first "
                f"questions ({n_first / n_records:.1%})")
        if later:
            n_later, top = sum(later.values()), later.most_common(1)[0][0]
            line += f"; later {n_later} ({top!r} {later[top] / n_later:.0%})"
            if first:
                line += f", first ({top!r} {first[top] / n_first:.0%}), distance {skew(first, later):.2f}"
            line += f", later kept {sum(kept_later.get(kind, {}).values())}"
        print(line)
    print(f"questions kept: {sum(len(s.turns) for s in kept)} of {sum(len(s.turns) for s in samples)}")


if __name__ == "__main__":
    main()
