"""A multi-turn chat about one image: the image is prefilled (and pruned) once, later turns only extend.

A new turn feeds what the chat template appends for it: render(history + question) minus render(history).
The answer itself is already in the KV cache as generated, closed by the end-of-turn token the model sampled
(as llama.cpp's own server appends turns). A conversation owns the Pipeline's caches from its first turn until
another conversation or a one-shot question takes them; its next turn then fails with a clear error instead of
continuing someone else's context.

A conversation can also be rebuilt from a transcript (`load`): the first question is prefilled with the image, each
earlier answer is fed as the template closes it, and the next `ask` continues from there. This is how a stateless
client (the OpenAI chat API sends the whole history every time) gets a conversation whose caches are not at hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from atp_cli.errors import ContextLengthError, InputError
from atp_cli.generation import stream_text
from atp_cli.image_input import load_image
from atp_cli.prompt import IMAGE_MARKER, check_question
from atp_cli.sampling import Sampler

_UNSET = object()  # no set_image yet


class Conversation:
    """One image (or none) and its turns. A turn that does not complete - an error, Ctrl-C, or a caller that stops
    reading the stream - is rolled back: the caches, the history and the sampler are as they were before it."""

    def __init__(self, pipeline) -> None:
        self.pipe = pipeline
        self.image = _UNSET
        self.messages: list[dict] = []  # as rendered: [system], user (image marker + question), assistant, ...
        self.sampler = Sampler(pipeline.config.sampler)
        self.last_prompt_tokens = 0  # positions in the caches when the last answer started (its whole prompt)
        self.last_completion_tokens = 0
        self.finish_reason: str | None = None  # "stop" (end of turn) or "length" (max_tokens), of the last answer

    def set_image(self, image, system: str | None = None) -> None:
        """Start over with a new image (None: a chat without one) and an optional system message; the next
        question prefills it, and the sampler starts from its seed again."""
        self.image = None if image is None else load_image(image)
        self.messages = [{"role": "system", "content": system}] if system is not None else []
        self.sampler = Sampler(self.pipe.config.sampler)
        self.pipe.release(self)

    @property
    def turns(self) -> int:
        """Questions answered so far."""
        return sum(m["role"] == "user" for m in self.messages)

    def ask(self, question: str, max_tokens: int | None = None) -> Iterator[str]:
        """Stream the answer to `question` (at most `max_tokens` tokens; default: the Pipeline's)."""
        if self.image is _UNSET:
            raise InputError("no image: set one first (set_image(None) for a chat without an image)")
        check_question(question)
        max_tokens = self.pipe.config.max_tokens if max_tokens is None else max_tokens
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        with self.pipe.session(self) as dec:
            with self._rollback(dec):
                yield from self._turn(dec, question, max_tokens)

    def load(self, transcript: Sequence[dict]) -> None:
        """Rebuild the caches from earlier turns (user and assistant messages alternating, the first a user's),
        after set_image: the answers are fed as given, not generated. The next `ask` continues the conversation."""
        if self.image is _UNSET:
            raise InputError("no image: set one first (set_image(None) for a chat without an image)")
        if self.turns:
            raise InputError("load rebuilds a conversation from its start; call set_image first")
        _check_transcript(transcript)
        with self.pipe.session(self) as dec:
            with self._rollback(dec):
                for user, assistant in zip(transcript[0::2], transcript[1::2]):
                    self._feed_question(dec, user["content"], 0)
                    self._feed(dec, self.pipe.chat.answer_turn(self.messages, assistant["content"]))
                    self.messages.append({"role": "assistant", "content": assistant["content"]})

    @contextmanager
    def _rollback(self, dec) -> Iterator[None]:
        """Undo a turn (or a load) that does not complete, GeneratorExit included: caches, messages, sampler."""
        fresh = not self.turns  # nothing of this conversation is in the caches yet
        start, n_messages, rng = dec.next_pos, len(self.messages), self.sampler.state()
        done = False
        try:
            yield
            done = True
        finally:
            if not done:
                dec.truncate(0 if fresh else start)
                del self.messages[n_messages:]
                self.sampler.restore(rng)
                if fresh:
                    self.pipe.release(self)

    def _turn(self, dec, question: str, max_tokens: int) -> Iterator[str]:
        logits = self._feed_question(dec, question, max_tokens)
        self.last_prompt_tokens = dec.next_pos
        answer = []
        for piece in stream_text(dec, logits, self.sampler, max_tokens):
            answer.append(piece)
            yield piece
        self.last_completion_tokens = dec.next_pos - self.last_prompt_tokens
        self.finish_reason = "stop" if dec.stop_token is not None else "length"
        text = "".join(answer)
        closing = self._closing(dec, text)
        if len(closing):
            dec.extend(closing)
        self.messages.append({"role": "assistant", "content": text})

    def _closing(self, dec, text: str) -> np.ndarray:
        """What closes the answer in the caches: the rest of the template's assistant turn after the tokens
        generated (so the caches hold what a transcript of this conversation renders to, and a conversation rebuilt
        from it with `load` continues the same), else the end-of-turn token the model sampled."""
        turn = self.pipe.chat.answer_turn(self.messages, text)
        generated = np.asarray(dec.generated, np.int32)
        if len(turn) > len(generated) and np.array_equal(turn[:len(generated)], generated):
            return turn[len(generated):]
        return np.asarray([] if dec.stop_token is None else [dec.stop_token], np.int32)

    def _feed_question(self, dec, question: str, max_tokens: int):
        """Prefill the first question with the image, or extend the caches with a later one; the next logits."""
        if not self.turns:
            history = self.messages[:]  # the system message, if any
            logits = self.pipe.prefill_image(self.image, question, history, max_tokens)
            content = question if self.image is None else f"{IMAGE_MARKER}\n{question}"
        else:
            content = question
            logits = self._feed(dec, self.pipe.chat.follow_up(self.messages, question), max_tokens)
        self.messages.append({"role": "user", "content": content})
        return logits

    def _feed(self, dec, tokens, room: int = 0):
        if dec.contexts[0].n_tokens + len(tokens) + room > dec.contexts[0].n_ctx:
            raise ContextLengthError("the conversation no longer fits the context; start over with a new image")
        return dec.extend(tokens)


def _check_transcript(transcript: Sequence[dict]) -> None:
    """Alternating user / assistant messages with text contents, starting with a user's and ending with an
    answer (the question to continue with goes to `ask`)."""
    if len(transcript) % 2:
        raise InputError("a transcript holds complete turns: user and assistant messages in pairs")
    for i, m in enumerate(transcript):
        role = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != role:
            raise InputError(f"message {i} of the transcript must be a {role} message")
        if not isinstance(m.get("content"), str):
            raise InputError(f"message {i} of the transcript has no text content")
        if role == "user":
            check_question(m["content"])
