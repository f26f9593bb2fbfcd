"""A multi-turn chat about one image: the image is prefilled (and pruned) once, later turns only extend.

A new turn feeds what the chat template appends for it: render(history + question) minus render(history).
The answer itself is already in the KV cache as generated, closed by the end-of-turn token the model sampled
(as llama.cpp's own server appends turns). A conversation owns the Pipeline's caches from its first turn until
another conversation or a one-shot question takes them; its next turn then fails with a clear error instead of
continuing someone else's context.
"""

from __future__ import annotations

from collections.abc import Iterator

from atp_cli.errors import InputError
from atp_cli.generation import stream_text
from atp_cli.image_input import load_image
from atp_cli.prompt import IMAGE_MARKER, check_question
from atp_cli.sampling import Sampler


class Conversation:
    """One image and its turns. A turn that does not complete - an error, Ctrl-C, or a caller that stops reading
    the stream - is rolled back: the caches, the history and the sampler are as they were before it."""

    def __init__(self, pipeline) -> None:
        self.pipe = pipeline
        self.image = None
        self.messages: list[dict] = []
        self.sampler = Sampler(pipeline.config.sampler)
        self.last_prompt_tokens = 0

    def set_image(self, image) -> None:
        """Start over with a new image (the next question prefills it; the sampler starts from its seed again)."""
        self.image = load_image(image)
        self.messages = []
        self.sampler = Sampler(self.pipe.config.sampler)
        self.pipe.release(self)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to `question`."""
        if self.image is None:
            raise InputError("no image: set one first")
        check_question(question)
        with self.pipe.session(self) as dec:
            start, n_messages, rng = dec.next_pos, len(self.messages), self.sampler.state()
            done = False
            try:
                yield from self._turn(dec, question)
                done = True
            finally:
                if not done:
                    dec.truncate(start if n_messages else 0)
                    del self.messages[n_messages:]
                    self.sampler.restore(rng)
                    if not self.messages:
                        self.pipe.release(self)

    def _turn(self, dec, question: str) -> Iterator[str]:
        if not self.messages:
            logits = self.pipe.prefill_image(self.image, question)
            user = {"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}
        else:
            user = {"role": "user", "content": question}
            tokens = self.pipe.chat.follow_up(self.messages, question)
            if dec.contexts[0].n_tokens + len(tokens) + self.pipe.config.max_tokens > dec.contexts[0].n_ctx:
                raise InputError("the conversation no longer fits the context; start over with /image")
            logits = dec.extend(tokens)
        answer = []
        for piece in stream_text(dec, logits, self.sampler, self.pipe.config.max_tokens):
            answer.append(piece)
            yield piece
        if dec.stop_token is not None:  # close the turn in the cache
            dec.extend([dec.stop_token])
        self.messages += [user, {"role": "assistant", "content": "".join(answer)}]
