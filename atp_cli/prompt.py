"""Chat prompts with an image: the model's own chat template, the image span placed where the user turn has it."""

from __future__ import annotations

import jinja2
import numpy as np

from atp_cli.errors import ModelError
from atp_cli.prompt_input import Prompt, Span
from atp_cli.runtime.model import LlamaModel

IMAGE_MARKER = "\x00IMAGE\x00"  # stands for the image span in rendered text
# used when a GGUF carries no chat template (Vicuna v1 style, as LLaVA-1.5)
FALLBACK_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
                     "{% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


class ChatFormat:
    """Renders conversations with the template stored in the model (tokenizer.chat_template)."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        source = model.meta("tokenizer.chat_template") or FALLBACK_TEMPLATE
        env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ModelError(f"the chat template of {model.path} does not parse: {e}") from e
        self.bos = model.token_piece(int(model.meta("tokenizer.ggml.bos_token_id") or 0)).decode(errors="replace")
        self.eos = model.token_piece(int(model.meta("tokenizer.ggml.eos_token_id") or 0)).decode(errors="replace")

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos, eos_token=self.eos)

    def image_prompt(self, image_rows: np.ndarray, question: str, history: list[dict] | None = None) -> Prompt:
        """Prompt for a user turn that starts with the image and asks `question`."""
        messages = [*(history or []), {"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}]
        text = self.render(messages)
        before, after = text.split(IMAGE_MARKER, 1)
        spans = []  # add_special: llama.cpp adds BOS where the vocabulary asks for it, unless the template did
        ids_before = self.model.tokenize(before, add_special=not before.startswith(self.bos))
        if ids_before.size:
            spans.append(Span.text(ids_before))
        spans.append(Span.image(image_rows))
        spans.append(Span.text(self.model.tokenize(after)))
        return Prompt(tuple(spans))

    def text_prompt(self, question: str) -> Prompt:
        """Prompt for a user turn with no image: the blind baseline asks the same question this way."""
        text = self.render([{"role": "user", "content": question}])
        return Prompt((Span.text(self.model.tokenize(text, add_special=not text.startswith(self.bos))),))

    def follow_up(self, history: list[dict], question: str) -> np.ndarray:
        """Token ids that continue a conversation whose turns so far are `history` (text-only turn)."""
        full = self.render([*history, {"role": "user", "content": question}])
        done = self.render(history, add_generation_prompt=False)
        if not full.startswith(done):
            raise ModelError("the chat template does not extend conversations by appending")
        return self.model.tokenize(full[len(done):])


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
