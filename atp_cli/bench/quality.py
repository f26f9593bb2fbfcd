"""Accuracy and cost of strategies x budgets on a question split, through the Pipeline a user runs.

Per row: exact-match accuracy (and per question type), agreement with the unpruned answer, the share of the
unpruned row's accuracy it keeps (with a paired bootstrap interval over the questions), visual tokens
averaged over all layers (paper metric) and entering the language model, vision-encoder time, prefill, time to
first token, decode speed, KV in use and peak RSS. The stock llama-cpp-python row (atp_cli.bench.peer) answers
the same questions on the same files and threads.
"""

from __future__ import annotations

import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import bootstrap

from atp_cli.bench.memory import PeakRss
from atp_cli.bench.peer import StockLlava
from atp_cli.calibration import calibrate_hybrid, calibrate_pipeline
from atp_cli.data.scenes import exact_match, normalise
from atp_cli.errors import InputError
from atp_cli.pipeline import Pipeline
from atp_cli.pruning.budget import FIXED_RULES, params_for_budget
from atp_cli.pruning.registry import DEFAULT_FREE_STRIDES

PEER = "stock llama-cpp-python"
BLIND = "blind (no image)"


@dataclass(frozen=True)
class Plan:
    """One row to measure: a strategy at a target budget (None: the strategy's own, e.g. trained ATP)."""

    strategy: str
    budget: float | None = None


@dataclass
class Row:
    strategy: str
    budget: float | None
    params: dict
    n: int = 0
    accuracy: float = 0.0
    agreement: float = 0.0  # answers equal (normalised) to the unpruned atp answer on the same question
    retained: float | None = None  # accuracy / the unpruned row's accuracy (None: that row got nothing right)
    retained_ci: tuple[float, float] | None = None  # 95 % paired bootstrap interval of `retained`
    tokens_avg: float = 0.0  # visual tokens averaged over all decoder layers
    visual_in: float = 0.0  # visual tokens entering the language model
    encode_s: float | None = None
    prefill_s: float | None = None
    ttft_s: float = 0.0
    decode_tok_s: float | None = None  # None: answers too short (one token) to time decoding
    kv_mib: float = 0.0
    peak_rss_mib: float = 0.0
    by_kind: dict[str, list[int]] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)  # per question, in split order

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Samples:
    """Per-question measurements of one row, summarised by medians (times) and means (counts)."""

    correct: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, answer: str, gold: str, kind: str, **values: float) -> None:
        self.answers.append(answer)
        self.correct.append(exact_match(answer, gold))
        self.kinds.append(kind)
        for k, v in values.items():
            self.values[k].append(v)

    def fill(self, row: Row, reference: list[str] | None) -> Row:
        row.n = len(self.correct)
        row.accuracy = sum(self.correct) / row.n
        if reference is not None:
            row.agreement = sum(normalise(a) == normalise(b) for a, b in zip(self.answers, reference)) / row.n
        kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for ok, kind in zip(self.correct, self.kinds):
            kinds[kind][0] += ok
            kinds[kind][1] += 1
        row.by_kind = dict(sorted(kinds.items()))
        row.answers = self.answers
        row.correct = self.correct
        for key in ("tokens_avg", "visual_in"):
            setattr(row, key, statistics.fmean(self.values[key]))
        for key in ("encode_s", "prefill_s", "ttft_s", "decode_tok_s", "kv_mib"):
            if key in self.values:
                setattr(row, key, statistics.median(self.values[key]))
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


def strategy_params(pipe: Pipeline, plan: Plan, calibration: Sequence[dict]) -> dict:
    """The parameters that make `plan.strategy` meet `plan.budget` on this model."""
    if plan.budget is None or plan.strategy in ("none", "atp"):
        return {}
    n_layer, n_visual = pipe.model.n_layer, pipe.n_visual
    if plan.strategy in FIXED_RULES:
        return params_for_budget(plan.strategy, plan.budget, n_layer, n_visual)
    if plan.strategy == "hybrid":
        if not calibration:
            raise InputError("hybrid at a chosen budget needs calibration questions (--calibration)")
        keep, _ = calibrate_hybrid(pipe, [(r["image_path"], r["question"]) for r in calibration], plan.budget)
        return {"keep": keep}
    if plan.strategy == "atp-free":
        if not calibration:
            raise InputError("atp-free at a chosen budget needs calibration questions (--calibration)")
        questions = [(r["image_path"], r["question"]) for r in calibration]
        _, cal = calibrate_pipeline(pipe, questions, plan.budget, DEFAULT_FREE_STRIDES)
        return {"mass": cal.mass[0]}
    raise InputError(f"no budget rule for strategy {plan.strategy!r}")


def run_plan(pipe: Pipeline, plan: Plan, rows: Sequence[dict], reference: list[str] | None,
             calibration: Sequence[dict] = (), tick: Callable[[], None] = lambda: None) -> Row:
    params = strategy_params(pipe, plan, calibration)
    pipe.set_strategy(plan.strategy, **params)
    samples = _Samples()
    with PeakRss() as peak:
        for r in rows:
            result = pipe(r["image_path"], r["question"])
            samples.add(result.text, r["answer"], r.get("kind", "all"), tokens_avg=result.stats.visual_tokens_avg,
                        visual_in=result.visual_in, encode_s=result.encode_seconds,
                        prefill_s=result.stats.prefill_seconds, ttft_s=result.first_token_seconds,
                        decode_tok_s=result.decode_tokens_per_s, kv_mib=result.kv_bytes / 2**20)
            tick()
    row = samples.fill(Row(plan.strategy, plan.budget, params), reference)
    row.peak_rss_mib = peak.mib
    return row


def run_peer(peer: StockLlava, rows: Sequence[dict], n_visual: int, reference: list[str] | None,
             tick: Callable[[], None] = lambda: None) -> Row:
    samples = _Samples()
    with PeakRss() as peak:
        for r in rows:
            ans = peer(r["image_path"], r["question"])
            decode = {"decode_tok_s": ans.decode_tokens_per_s} if ans.decode_tokens_per_s > 0 else {}
            samples.add(ans.text, r["answer"], r.get("kind", "all"), tokens_avg=n_visual, visual_in=n_visual,
                        ttft_s=ans.first_token_seconds, kv_mib=ans.kv_bytes / 2**20, **decode)
            tick()
    row = samples.fill(Row(PEER, None, {}), reference)
    row.peak_rss_mib = peak.mib
    return row


def run_blind(pipe: Pipeline, rows: Sequence[dict], reference: list[str] | None,
              tick: Callable[[], None] = lambda: None) -> Row:
    """The same questions without the image: how much of the accuracy the question text alone gives."""
    from atp_cli.generation import stream_text
    from atp_cli.sampling import Sampler

    pipe.set_strategy("none")
    samples = _Samples()
    with PeakRss() as peak:
        for r in rows:
            pipe.decoder.reset()
            logits = pipe.decoder.prefill(pipe.chat.text_prompt(r["question"]), None)
            text = "".join(stream_text(pipe.decoder, logits, Sampler(pipe.config.sampler), pipe.config.max_tokens))
            samples.add(text, r["answer"], r.get("kind", "all"), tokens_avg=0.0, visual_in=0.0,
                        prefill_s=pipe.decoder.stats.prefill_seconds, kv_mib=pipe.decoder.kv_used_bytes() / 2**20)
            tick()
    row = samples.fill(Row(BLIND, None, {}), reference)
    row.peak_rss_mib = peak.mib
    return row


def run_quality(pipe: Pipeline, rows: Sequence[dict], plans: Sequence[Plan], peer: StockLlava | None = None,
                calibration: Sequence[dict] = (), tick: Callable[[], None] = lambda: None,
                blind: bool = False) -> list[Row]:
    """Measure `plans` (the unpruned row first: it is the agreement reference), the peer, and the blind row."""
    ordered = sorted(plans, key=lambda p: p.strategy != "none")
    if not ordered or ordered[0].strategy != "none":
        ordered.insert(0, Plan("none"))
    out = [run_plan(pipe, ordered[0], rows, None, calibration, tick)]
    reference = out[0].answers
    out[0].agreement = 1.0
    out += [run_plan(pipe, p, rows, reference, calibration, tick) for p in ordered[1:]]
    if peer is not None:
        out.append(run_peer(peer, rows, pipe.n_visual, reference, tick))
    if blind:
        out.append(run_blind(pipe, rows, reference, tick))
    for row in out:
        row.retained, row.retained_ci = paired_retention(row.correct, out[0].correct)
    return out
