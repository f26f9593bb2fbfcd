"""A multi-turn chat about one image: the image is prefilled (and pruned) once, later turns only extend.

A new turn feeds what the chat template appends for it: render(history + question) minus render(history).
The answer itself is already in the KV cache as generated, closed by the end-of-turn token the model sampled
(as llama.cpp's own server appends turns).
"""

from __future__ import annotations

from collections.abc import Iterator

from atp_cli.errors import InputError
from atp_cli.generation import stream_text
from atp_cli.image_input import load_image
from atp_cli.prompt import IMAGE_MARKER
from atp_cli.sampling import Sampler


class Conversation:
    def __init__(self, pipeline) -> None:
        self.pipe = pipeline
        self.image = None
        self.messages: list[dict] = []
        self.sampler = Sampler(pipeline.config.sampler)
        self.last_prompt_tokens = 0

    def set_image(self, image) -> None:
        """Start over with a new image (the next question prefills it)."""
        self.image = load_image(image)
        self.messages = []
        self.pipe.decoder.reset()

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to `question`; a Ctrl-C during streaming keeps the partial answer as the turn."""
        if self.image is None:
            raise InputError("no image: set one first")
        if not question.strip():
            raise InputError("the question is empty")
        dec = self.pipe.decoder
        if not self.messages:
            logits = self.pipe.prefill_image(self.image, question)
            user = {"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}
        else:
            user = {"role": "user", "content": question}
            tokens = self.pipe.chat.follow_up(self.messages, question)
            if dec.contexts[0].n_tokens + len(tokens) + self.pipe.config.max_tokens > dec.contexts[0].n_ctx:
                raise InputError("the conversation no longer fits the context; start over with /image")
            logits = dec.extend(tokens)
        self.messages.append(user)
        answer = []
        try:
            for piece in stream_text(dec, logits, self.sampler, self.pipe.config.max_tokens):
                answer.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(answer)})
            stop = dec.stop_token
            if stop is not None:  # close the turn in the cache
                dec.extend([stop])
