"""One Pipeline answering server jobs, one at a time, in its own thread.

A worker remembers which conversation its caches hold (image, system message, turns, pruning). A request that
continues it - the same history plus one more question, as OpenAI clients send - extends the caches; any other
request rebuilds them from its transcript (Conversation.load). The image's projected rows come from the
Pipeline's embedding cache either way, so an image is encoded once while it stays in that cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from atp_cli.calibration import budget_params
from atp_cli.conversation import Conversation
from atp_cli.errors import InputError
from atp_cli.pipeline import Pipeline
from atp_cli.pruning.registry import NAMES
from atp_cli.sampling import Sampler
from atp_cli.server.jobs import Job, Pruning


@dataclass
class Outcome:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float
    encode_seconds: float
    prefill_seconds: float
    visual_tokens_in: int
    visual_tokens_avg: float
    kv_bytes: int
    prefill_reused: bool
    pruning: Pruning
    cancelled: bool = False


class StopScanner:
    """Cuts streamed text at the first stop sequence; text that may be the start of one is held back until the
    next piece tells."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop sequence ended the answer)."""
        text = self.held + piece
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class Worker:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.conv: Conversation | None = None
        self.held_history: tuple | None = None  # Job.history() of what the caches hold, None when unknown
        self.installed: Pruning | None = None
        self.answered = 0  # requests answered to the end
        self.cancelled = 0  # requests whose client went away while they were generating

    def holds(self, job: Job) -> bool:
        """Does this worker's cache hold the conversation `job` continues?"""
        return self.conv is not None and self.held_history == job.history()

    def run(self, job: Job, cancelled: threading.Event, emit: Callable[[str], None]) -> Outcome:
        """Answer `job`, sending text through `emit` as it comes; stops early when `cancelled` is set (the client
        went away), leaving the caches as before the question."""
        t0 = time.perf_counter()
        self.install(job.pruning)
        reused = self.holds(job)
        if not reused:
            self.held_history = None
            conv = self.conv = self.pipe.conversation()
            conv.set_image(job.image, job.system)
            conv.load(job.transcript_messages())
            self.held_history = job.history()
        conv = self.conv
        conv.sampler = Sampler(job.sampler)
        scanner, pieces, first = StopScanner(job.stops), [], None
        stream = conv.ask(job.question, job.max_tokens)
        stopped = was_cancelled = False
        try:
            for piece in stream:
                if cancelled.is_set():
                    was_cancelled = True
                    break
                text, stopped = scanner.feed(piece)
                if text:
                    first = first if first is not None else time.perf_counter() - t0
                    pieces.append(text)
                    emit(text)
                if stopped:
                    break
        finally:
            stream.close()  # an unfinished turn is rolled back: the caches hold the history alone again
        complete = not stopped and not was_cancelled
        if complete and scanner.held:  # the answer ended inside what might have begun a stop sequence
            pieces.append(scanner.flush())
            emit(pieces[-1])
        answer = "".join(pieces)
        self.answered += not was_cancelled
        self.cancelled += was_cancelled
        if complete:
            self.held_history = job.history_after(answer)
        return self._outcome(job, conv, answer, stopped, was_cancelled, reused,
                             first if first is not None else time.perf_counter() - t0)

    def _outcome(self, job: Job, conv: Conversation, answer: str, stopped: bool, was_cancelled: bool, reused: bool,
                 first: float) -> Outcome:
        prefilled = self.pipe.last_result
        fresh = not reused and not job.transcript  # this request prefilled the image with its own question
        complete = not stopped and not was_cancelled
        completion = conv.last_completion_tokens if complete else len(self.pipe.chat.tokenize(answer, inside=True))
        return Outcome(
            text=answer, finish_reason="stop" if stopped else (conv.finish_reason or "stop"),
            prompt_tokens=conv.last_prompt_tokens, completion_tokens=completion, first_token_seconds=first,
            encode_seconds=prefilled.encode_seconds if fresh else 0.0,
            prefill_seconds=prefilled.stats.prefill_seconds if fresh else 0.0,
            visual_tokens_in=prefilled.visual_in if job.image is not None else 0,
            visual_tokens_avg=prefilled.stats.visual_tokens_avg if job.image is not None else 0.0,
            kv_bytes=self.pipe.decoder.kv_used_bytes(), prefill_reused=reused,
            pruning=Pruning(self.pipe.strategy.name, job.pruning.budget),  # what ran (atp without weights: atp-free)
            cancelled=was_cancelled)

    def install(self, pruning: Pruning) -> None:
        """The job's strategy and budget (a change drops the conversation the caches hold)."""
        if pruning == self.installed:
            return
        if pruning.strategy not in NAMES:
            raise InputError(f"unknown strategy {pruning.strategy!r}; one of: {', '.join(NAMES)}")
        if pruning.budget is not None and not 1 <= pruning.budget <= self.pipe.n_visual:
            raise InputError(f"budget {pruning.budget:g} is outside 1..{self.pipe.n_visual} (the model's visual "
                             "tokens)")
        params = budget_params(self.pipe, pruning.strategy, pruning.budget)
        self.conv, self.held_history, self.installed = None, None, None
        self.pipe.set_strategy(pruning.strategy, **params)
        self.installed = pruning
