"""Accuracy, fidelity and cost of strategies x budgets on a question split, through the Pipeline a user runs.

Per row: exact-match accuracy (and per question type), fidelity to the unpruned model - the share of greedy answers
equal to the unpruned answer, and the KL divergence and top-1 agreement of the first answer token's distribution -
each with a paired bootstrap 95 % interval over the questions, the share of the unpruned row's accuracy it keeps,
visual tokens averaged over all layers (paper metric) and entering the language model, the tokens each module kept,
vision-encoder time, prefill, time to first token, decode speed, KV in use and peak RSS; and for every row the
paired interval of its difference from the atp row nearest in tokens. The stock llama-cpp-python row
(atp_cli.bench.peer) answers the same questions on the same files and threads; the blind row asks them without the
image.

The run goes in chunks of questions: within a chunk every row answers every question before the next chunk, so each
image is encoded once (the Pipeline's embedding cache holds the chunk's images) and the unpruned row's
distributions, against which the others are scored, are at hand. Every (row, question) is recorded on disk as it
completes (atp_cli.bench.records), so a stopped run resumes where it stopped and chunks combine exactly.
"""

from __future__ import annotations

import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import bootstrap

from atp_cli.bench.fidelity import kl_divergence, mean_interval, paired_difference, top1_equal
from atp_cli.bench.memory import PeakRss
from atp_cli.bench.peer import StockLlava
from atp_cli.bench.records import RunStore
from atp_cli.calibration import budget_params
from atp_cli.data.scenes import exact_match, normalise
from atp_cli.errors import InputError
from atp_cli.pipeline import Pipeline, Result
from atp_cli.pruning.budget import FIXED_RULES, params_for_budget

PEER = "stock llama-cpp-python"
BLIND = "blind (no image)"
UNPRUNED = "none"
VERSUS = ("atp", "hybrid")  # the rows every other row is compared with (paired difference intervals)
CHUNK = 32  # questions per chunk: their projected images fit the Pipeline's default embedding cache (64 MiB)
Interval = tuple[float, float] | None


@dataclass(frozen=True)
class Plan:
    """One row to measure: a strategy at a target budget (None: the strategy's own, e.g. trained ATP)."""

    strategy: str
    budget: float | None = None

    @property
    def key(self) -> str:
        return self.strategy if self.budget is None else f"{self.strategy}@{self.budget:g}"


@dataclass
class Row:
    strategy: str
    budget: float | None
    params: dict
    n: int = 0
    accuracy: float = 0.0
    accuracy_ci: Interval = None
    agreement: float = 0.0  # answers equal (normalised) to the unpruned answer on the same question
    agreement_ci: Interval = None
    kl: float | None = None  # mean KL(unpruned || this row) of the first answer token, nats
    kl_ci: Interval = None
    top1: float | None = None  # share of questions whose most likely first token is the unpruned one
    top1_ci: Interval = None
    retained: float | None = None  # accuracy / the unpruned row's accuracy (None: that row got nothing right)
    retained_ci: Interval = None  # 95 % paired bootstrap interval of `retained`
    tokens_avg: float = 0.0  # visual tokens averaged over all decoder layers
    visual_in: float = 0.0  # visual tokens entering the language model
    kept_per_module: list[list[int]] = field(default_factory=list)  # per question, the visual tokens each module kept
    kinds: list[str] = field(default_factory=list)  # per question, its type
    encode_s: float | None = None
    prefill_s: float | None = None
    ttft_s: float = 0.0
    decode_tok_s: float | None = None  # None: answers too short (one token) to time decoding
    kv_mib: float = 0.0
    peak_rss_mib: float = 0.0
    by_kind: dict[str, list[int]] = field(default_factory=dict)
    versus: dict = field(default_factory=dict)  # {"row": key, metric: [difference, interval]} against atp
    answers: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)  # per question, in split order

    def as_dict(self) -> dict:
        return asdict(self)


def _record(key: str, i: int, row: dict, text: str, result: Result | None, reference: tuple | None,
            rss_mib: float, **values) -> dict:
    """One (row, question) measurement: the answer, its fidelity to the unpruned one and what it cost."""
    rec = {"row": key, "i": i, "kind": row.get("kind", "all"), "answer": text,
           "correct": exact_match(text, row["answer"]), "rss_mib": rss_mib, **values}
    if reference is not None:
        ref_logprobs, ref_text = reference
        rec["agree"] = normalise(text) == normalise(ref_text)
        if result is not None and result.first_logprobs is not None and ref_logprobs is not None:
            rec["kl"] = kl_divergence(ref_logprobs, result.first_logprobs)
            rec["top1"] = top1_equal(ref_logprobs, result.first_logprobs)
    if result is not None:
        rec.update(tokens_avg=result.stats.visual_tokens_avg, visual_in=result.visual_in,
                   encode_s=result.encode_seconds, prefill_s=result.stats.prefill_seconds,
                   ttft_s=result.first_token_seconds, decode_tok_s=result.decode_tokens_per_s or None,
                   kv_mib=result.kv_bytes / 2**20, kept=[len(k) for k in result.stats.kept_raster])
    return rec


def summarise(strategy: str, budget: float | None, params: dict, records: list[dict]) -> Row:
    """A row's figures from its per-question records (medians for times, means for counts and fidelity)."""
    row = Row(strategy, budget, params, n=len(records))
    correct = [bool(r["correct"]) for r in records]
    row.accuracy, row.accuracy_ci = mean_interval(correct)
    if all("agree" in r for r in records):
        row.agreement, row.agreement_ci = mean_interval([bool(r["agree"]) for r in records])
    if all("kl" in r for r in records):
        row.kl, row.kl_ci = mean_interval([r["kl"] for r in records])
        row.top1, row.top1_ci = mean_interval([bool(r["top1"]) for r in records])
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, ok in zip(records, correct):
        kinds[r["kind"]][0] += ok
        kinds[r["kind"]][1] += 1
    row.by_kind = dict(sorted(kinds.items()))
    row.answers, row.correct, row.kinds = [r["answer"] for r in records], correct, [r["kind"] for r in records]
    row.kept_per_module = [list(r.get("kept", [])) for r in records]
    for key in ("tokens_avg", "visual_in"):
        setattr(row, key, statistics.fmean(r.get(key, 0.0) for r in records))
    for key in ("encode_s", "prefill_s", "ttft_s", "decode_tok_s", "kv_mib"):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            setattr(row, key, statistics.median(values))
    row.peak_rss_mib = max(r["rss_mib"] for r in records)
    return row


def paired_retention(correct: Sequence[bool], reference: Sequence[bool], confidence: float = 0.95,
                     resamples: int = 4000, seed: int = 0) -> tuple[float | None, tuple[float, float] | None]:
    """Accuracy of `correct` over that of `reference` (the same questions), and a bootstrap interval for it.

    Both rows answered the same questions, so the interval resamples questions and keeps each question's pair of
    outcomes together (paired): a hard question drawn twice is hard for both rows, and only the questions the rows
    disagree on widen it. With ~100 questions one question moves the ratio by a few points, which is why a
    retention figure needs its interval. (None, None) when the reference got nothing right; the interval is None
    when every resample gives the same ratio or some resample leaves the reference with nothing right.
    """
    ours, ref = np.asarray(correct, float), np.asarray(reference, float)
    if ours.shape != ref.shape or ours.ndim != 1:
        raise ValueError(f"paired rows need the same questions: {ours.shape} vs {ref.shape}")
    if not ref.sum():
        return None, None
    point = float(ours.mean() / ref.mean())

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return a.mean(axis) / b.mean(axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate samples (every ratio equal) are reported as None below
        res = bootstrap((ours, ref), ratio, paired=True, vectorized=True, confidence_level=confidence,
                        n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return point, ((low, high) if np.isfinite([low, high]).all() and low < high else None)


@dataclass(frozen=True)
class _Entry:
    """A row of the run: how it answers one question."""

    key: str
    strategy: str
    budget: float | None
    params: dict
    answer: Callable[[dict], tuple[str, Result | None, dict]]  # row -> (text, result, extra record values)


def _pipeline_entry(pipe: Pipeline, plan: Plan, params: dict) -> _Entry:
    def answer(r: dict) -> tuple[str, Result | None, dict]:
        pipe.set_strategy(plan.strategy, **params)  # a no-op while it stays the same strategy
        result = pipe(r["image_path"], r["question"])
        return result.text, result, {}

    return _Entry(plan.key, plan.strategy, plan.budget, params, answer)


def _blind_entry(pipe: Pipeline) -> _Entry:
    def answer(r: dict) -> tuple[str, Result | None, dict]:
        pipe.set_strategy(UNPRUNED)
        result = pipe(None, r["question"])
        return result.text, result, {"encode_s": None, "ttft_s": 0.0}

    return _Entry(BLIND, BLIND, None, {}, answer)


def _peer_entry(peer: StockLlava, n_visual: int) -> _Entry:
    def answer(r: dict) -> tuple[str, Result | None, dict]:
        ans = peer(r["image_path"], r["question"])
        return ans.text, None, {"tokens_avg": float(n_visual), "visual_in": float(n_visual),
                                "ttft_s": ans.first_token_seconds, "kv_mib": ans.kv_bytes / 2**20,
                                "decode_tok_s": ans.decode_tokens_per_s or None}

    return _Entry(PEER, PEER, None, {}, answer)


def plan_params(pipe: Pipeline, plans: Sequence[Plan], calibration: Sequence[dict]) -> dict[str, dict]:
    """Each plan's strategy parameters on this model (calibrated where the budget needs it)."""
    return {p.key: budget_params(pipe, p.strategy, p.budget, calibration) for p in plans}


def run_quality(pipe: Pipeline, rows: Sequence[dict], plans: Sequence[Plan], peer: StockLlava | None = None,
                calibration: Sequence[dict] = (), tick: Callable[[], None] = lambda: None,
                blind: bool = False, store: RunStore | None = None, chunk: int = CHUNK) -> list[Row]:
    """Measure `plans` (the unpruned row first: it is the reference of agreement, KL and retention), the peer and
    the blind row on `rows`; records go to `store` as they complete, and questions it already holds are skipped."""
    ordered = sorted(plans, key=lambda p: p.strategy != UNPRUNED)
    if not ordered or ordered[0].strategy != UNPRUNED:
        ordered.insert(0, Plan(UNPRUNED))
    params = plan_params(pipe, ordered, calibration)
    store = store if store is not None else RunStore(None, {})
    entries = [_pipeline_entry(pipe, p, params[p.key]) for p in ordered]
    entries += [_peer_entry(peer, pipe.n_visual)] if peer is not None else []
    entries += [_blind_entry(pipe)] if blind else []
    unpruned = entries[0]
    for start in range(0, len(rows), chunk):
        block = range(start, min(len(rows), start + chunk))
        if all(store.has(e.key, i) for e in entries for i in block):
            continue
        reference = {}
        for i in block:  # the unpruned row first: its distributions are what the others are scored against
            with PeakRss() as peak:
                text, result, extra = unpruned.answer(rows[i])
            reference[i] = (result.first_logprobs, text)
            if not store.has(unpruned.key, i):
                store.add(_record(unpruned.key, i, rows[i], text, result, reference[i], peak.mib, **extra))
                tick()
        for entry in entries[1:]:
            for i in block:
                if store.has(entry.key, i):
                    continue
                with PeakRss() as peak:
                    text, result, extra = entry.answer(rows[i])
                store.add(_record(entry.key, i, rows[i], text, result, reference[i], peak.mib, **extra))
                tick()
    out = [summarise(e.strategy, e.budget, e.params, store.of(e.key, len(rows))) for e in entries]
    for row in out:
        row.retained, row.retained_ci = paired_retention(row.correct, out[0].correct)
    compare_with_atp(out, store, [e.key for e in entries], len(rows))
    return out


def compare_with_atp(rows: list[Row], store: RunStore, keys: list[str], n: int) -> None:
    """Each row's paired differences (accuracy, agreement, KL) from the atp (or hybrid) row nearest in average
    tokens: `versus` = {"row": its key, metric: [row minus atp, interval]}."""
    anchors = [(k, r) for k, r in zip(keys, rows) if r.strategy in VERSUS]
    if not anchors:
        return
    for key, row in zip(keys, rows):
        if row.strategy in VERSUS or row.strategy == BLIND:
            continue
        anchor_key, anchor = min(anchors, key=lambda a: abs(a[1].tokens_avg - row.tokens_avg))
        ours, theirs = store.of(key, n), store.of(anchor_key, n)
        row.versus = {"row": anchor_key}
        for metric in ("correct", "agree", "kl"):
            if all(metric in r for r in ours + theirs):
                d, ci = paired_difference([float(r[metric]) for r in ours], [float(r[metric]) for r in theirs])
                row.versus[metric] = [d, ci]


def check_plans(plans: Sequence[Plan], model_path, mmproj_path, have_calibration: bool) -> None:
    """Refuse, before any model work, budgets outside [1, visual tokens] and rows that cannot meet theirs."""
    from atp_cli.runtime.mmproj_check import check_mmproj
    from converters.convert import model_depth

    n_visual, n_layer = check_mmproj(mmproj_path).n_tokens, model_depth(model_path)
    for plan in plans:
        if plan.budget is None:
            continue
        if not 1 <= plan.budget <= n_visual:
            raise InputError(f"budget {plan.budget:g} for {plan.strategy} is outside 1..{n_visual} (the model's "
                             "visual tokens)")
        if plan.strategy in FIXED_RULES:
            params_for_budget(plan.strategy, plan.budget, n_layer, n_visual)  # raises when the rule cannot meet it
        if plan.strategy == "atp-free":
            first = _atp_boundaries(mmproj_path, n_layer, n_visual)[0]
            floor = first * n_visual / n_layer  # every token is alive before the first module
            if plan.budget < floor:
                raise InputError(f"atp-free cannot meet a budget of {plan.budget:g}: its first module is at layer "
                                 f"{first}, and the layers before it alone average {floor:.1f} visual tokens")
        if plan.strategy in ("atp-free", "hybrid") and not have_calibration:
            raise InputError(f"{plan.strategy} at a chosen budget needs calibration questions (--calibration)")


def _atp_boundaries(mmproj_path, n_layer: int, n_visual: int) -> list[int]:
    """The ATP modules' boundaries of this mmproj (its atp.* data, else the default layout)."""
    from atp_cli.pruning.config import default_boundaries
    from atp_cli.pruning.store import read_atp

    try:
        weights = read_atp(mmproj_path)
    except InputError:
        weights = None
    return list(weights.config.boundaries) if weights is not None else default_boundaries(n_layer)
