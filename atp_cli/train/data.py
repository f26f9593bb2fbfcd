"""Training data: LLaVA-format records (read by `atp_cli.llava_data`) turned into what the trainers feed. The ATP
trainer uses each record's first question, the projector trainer packs them all as independent questions."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from atp_cli.errors import InputError
from atp_cli.llava_data import IMAGE_PLACEHOLDER, Sample, load_samples  # noqa: F401  (the trainers' API)

SKEW = 0.2  # total variation between a type's first-turn and later-turn answers above which later turns are thinned


def answer_shares(samples: list[Sample], first: bool) -> dict[str, Counter]:
    """Per question type, how often each answer occurs among first turns (first=True) or among later turns."""
    shares: dict[str, Counter] = {}
    for s in samples:
        for k, ((_, answer), kind) in enumerate(zip(s.turns, s.kinds)):
            if (k == 0) == first:
                shares.setdefault(kind, Counter())[answer.lower()] += 1
    return shares


def skew(first: Counter, later: Counter) -> float:
    """Total-variation distance between two answer distributions given as counts: 0 alike, 1 disjoint."""
    n_first, n_later = sum(first.values()), sum(later.values())
    return 0.5 * sum(abs(first[a] / n_first - later[a] / n_later) for a in set(first) | set(later))


def _keep_rates(first: Counter, later: Counter) -> dict[str, float] | None:
    """Rejection-sampling rates that bring `later`'s answers to `first`'s shares, or None when they already agree
    within SKEW. An answer later turns give but first turns never do is dropped; the most under-represented one
    present keeps every turn."""
    if skew(first, later) <= SKEW:
        return None
    n_first, n_later = sum(first.values()), sum(later.values())
    ratio = {a: (first[a] / n_first) / (later[a] / n_later) for a in later}
    top = max(ratio.values())
    return {a: r / top if top else 0.0 for a, r in ratio.items()}


def rebalance_turns(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """The samples with later turns thinned wherever a question type's later answers are skewed against its first.

    Why: a generated record's layout is drawn for its first question (a count question gets 1-4 copies of its
    item), while later questions are asked of whatever the layout holds, so most later count questions answer
    "one" (93 % of the later Fashion-MNIST counts in the default training split, against 39 % of the first ones).
    Trained on every turn, the model learns to answer "one"; evaluation asks first questions. A later turn of a
    skewed type is kept with a probability (seeded) that gives its answers the first turns' shares; first turns,
    types that agree within SKEW, and records without question types are kept as they are.
    """
    firsts, laters = answer_shares(samples, True), answer_shares(samples, False)
    rates = {kind: _keep_rates(firsts[kind], later) for kind, later in laters.items() if kind in firsts}
    rng = random.Random(seed)

    def keep(s: Sample, k: int) -> bool:
        rate = rates.get(s.kinds[k]) if 0 < k < len(s.kinds) else None  # None: a first or untyped turn
        return rate is None or rng.random() < rate.get(s.turns[k][1].lower(), 0.0)

    out = []
    for s in samples:
        kept = [k for k in range(len(s.turns)) if keep(s, k)]
        out.append(s if len(kept) == len(s.turns) else replace(
            s, turns=tuple(s.turns[k] for k in kept), kinds=tuple(s.kinds[k] for k in kept if k < len(s.kinds))))
    return out


WEIGHT_CAP = 8.0  # largest importance weight a turn gets (keeps a rare first-only answer from dominating a step)


def first_turn_weights(samples: list[Sample], cap: float = WEIGHT_CAP) -> dict[tuple[str, str], float]:
    """Importance weights per (question type, answer) that make a loss over every turn estimate the loss over
    first turns: P_first(type, answer) / P_all(type, answer), at most `cap`, from the samples' own turns.

    Why: evaluation asks each image's first question, and first and later turns differ in mix. Text questions are
    only ever first (1.2 % of the default training split's answers, 8.1 % of its first questions: weight ~7), and
    later count questions mostly answer "one" (weighted down). Unlike `rebalance_turns` no turn is dropped: a later
    turn costs almost nothing next to the image it shares, so it keeps contributing, only at its first-turn share.
    A pair never asked first gets weight 0."""
    def pairs(shares: dict[str, Counter]) -> Counter:
        return Counter({(kind, answer): n for kind, counts in shares.items() for answer, n in counts.items()})

    first = pairs(answer_shares(samples, True))
    every = first + pairs(answer_shares(samples, False))
    n_first, n_all = sum(first.values()), sum(every.values())
    if n_first == 0:
        raise InputError("no typed first turns to weight toward (records need 'kinds')")
    return {pair: min(cap, (first[pair] / n_first) / (n / n_all)) for pair, n in every.items()}


def focused(weights: dict[tuple[str, str], float] | None, samples: list[Sample],
            focus: dict[str, float]) -> dict[tuple[str, str], float] | None:
    """`weights` (None: 1 for every (type, answer) of the samples) with each turn of a type in `focus` multiplied
    by its factor; None when there is nothing to scale.

    Why: a model continued from adapters that already read colours and shapes spends most of its loss on what it
    knows; raising the weight of the types it fails (position, relation, the mosaic's cells) puts the gradient there
    without new data or a new sampler (a turn is cheap next to the image it shares)."""
    if not focus:
        return weights
    if any(f < 0 or not np.isfinite(f) for f in focus.values()):
        raise InputError(f"focus factors must be finite and >= 0, got {focus}")
    if weights is None:
        weights = {(kind, answer): 1.0 for first in (True, False)
                   for kind, counts in answer_shares(samples, first).items() for answer in counts}
    unknown = set(focus) - {kind for kind, _ in weights}
    if unknown:
        raise InputError(f"focus names question types the training data does not ask: {sorted(unknown)}")
    return {(kind, answer): w * focus.get(kind, 1.0) for (kind, answer), w in weights.items()}


def turn_weights(sample: Sample, weights: dict[tuple[str, str], float]) -> np.ndarray:
    """(len(turns),) the weight of each turn of `sample`; 1 for a turn without a question type."""
    return np.array([weights.get((sample.kinds[k], answer.lower()), 0.0) if k < len(sample.kinds) else 1.0
                     for k, (_, answer) in enumerate(sample.turns)])


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of one training example; `labels` is -100 except on the answer."""

    input_ids: np.ndarray
    labels: np.ndarray
    visual: np.ndarray  # positions of the image tokens
    query: np.ndarray  # positions of the text after the image, up to the answer


def chat_prompt(tokenizer, question: str) -> tuple[str, str]:
    """The chat-template text before and after the image for a single user turn."""
    marker = "\x00IMAGE\x00"
    messages = [{"role": "user", "content": f"{marker}\n{question}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = text.split(marker, 1)
    return before, after


def encode_sample(tokenizer, sample: Sample, image_token_id: int, n_visual: int) -> PromptTokens:
    before, after = chat_prompt(tokenizer, sample.question)
    ids_before = tokenizer(before, add_special_tokens=True)["input_ids"]
    ids_after = tokenizer(after, add_special_tokens=False)["input_ids"]
    answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = ids_before + [image_token_id] * n_visual + ids_after + answer
    labels = [-100] * (len(ids) - len(answer)) + answer
    v0 = len(ids_before)
    visual = np.arange(v0, v0 + n_visual)
    query = np.arange(v0 + n_visual, v0 + n_visual + len(ids_after))
    return PromptTokens(np.array(ids), np.array(labels), visual, query)


@dataclass(frozen=True)
class PackedTokens:
    """All turns of a sample in one sequence: the image prefix once, then each turn as its own branch.

    `block` is 0 on the shared prefix (chat header + image) and k on turn k; a token sees the prefix and the
    earlier tokens of its own turn only, and each turn's positions continue from the prefix, so every turn is
    computed exactly as a single-turn example would be while the image is paid for once.
    """

    input_ids: np.ndarray  # (T,)
    labels: np.ndarray  # (T,) -100 except on the answers
    positions: np.ndarray  # (T,) rope positions
    block: np.ndarray  # (T,) 0 = prefix, k = turn k
    visual: np.ndarray  # positions of the image tokens

    def allowed(self) -> np.ndarray:
        """(T, T) bool: query i may attend key j."""
        t = len(self.block)
        causal = np.tril(np.ones((t, t), dtype=bool))
        same = (self.block[None, :] == 0) | (self.block[None, :] == self.block[:, None])
        return causal & same


def encode_packed(tokenizer, sample: Sample, image_token_id: int, n_visual: int) -> PackedTokens:
    before, _ = chat_prompt(tokenizer, sample.question)
    prefix = tokenizer(before, add_special_tokens=True)["input_ids"] + [image_token_id] * n_visual
    ids, labels, positions, block = list(prefix), [-100] * len(prefix), list(range(len(prefix))), [0] * len(prefix)
    for k, (question, answer) in enumerate(sample.turns, start=1):
        head, after = chat_prompt(tokenizer, question)
        if head != before:
            raise InputError(f"the chat template puts question-dependent text before the image: {head!r}")
        asked = tokenizer(after, add_special_tokens=False)["input_ids"]
        said = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += asked + said
        labels += [-100] * len(asked) + said
        positions += range(len(prefix), len(prefix) + len(asked) + len(said))
        block += [k] * (len(asked) + len(said))
    v0 = len(prefix) - n_visual
    return PackedTokens(np.array(ids), np.array(labels), np.array(positions), np.array(block),
                        np.arange(v0, v0 + n_visual))
