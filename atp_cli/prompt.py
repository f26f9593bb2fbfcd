"""Chat prompts with an image: the model's own chat template, the image span placed where the user turn has it."""

from __future__ import annotations

import re

import jinja2
import numpy as np

from atp_cli.errors import InputError, ModelError
from atp_cli.prompt_input import Prompt, Span
from atp_cli.runtime.model import LlamaModel

IMAGE_MARKER = "\x00IMAGE\x00"  # stands for the image span in rendered text
# around message contents in rendered text, when a content holds a special token's text (see ChatFormat.tokenize)
CONTENT_OPEN, CONTENT_CLOSE = "\x00<content>\x00", "\x00</content>\x00"
_CONTENT_SPLIT = re.compile(f"({re.escape(CONTENT_OPEN)}|{re.escape(CONTENT_CLOSE)})")
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

    def needs_wrapping(self, messages: list[dict]) -> bool:
        """Does a message content hold the text of a special token?"""
        specials = self.model.special_texts()
        return any(s in str(m.get("content", "")) for m in messages for s in specials)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, wrap: bool | None = None) -> str:
        """The template's text for `messages`. With `wrap` (default: where a content holds a special token's text)
        every content is wrapped in CONTENT_OPEN/CONTENT_CLOSE so that `tokenize` reads it as plain text."""
        if self.needs_wrapping(messages) if wrap is None else wrap:
            messages = [{**m, "content": f"{CONTENT_OPEN}{m.get('content', '')}{CONTENT_CLOSE}"} for m in messages]
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos, eos_token=self.eos)

    def tokenize(self, text: str, add_special: bool = False, inside: bool = False) -> np.ndarray:
        """Token ids of rendered text: the template's own special tokens are parsed, message contents never are
        (a user's `<|im_end|>` stays text). `inside`: the text starts within a content. Text without wrapped
        contents is tokenized in one piece, exactly as llama.cpp tokenizes a prompt."""
        if not inside and CONTENT_OPEN not in text and CONTENT_CLOSE not in text:
            return self.model.tokenize(text, add_special=add_special)
        ids = []
        for part in _CONTENT_SPLIT.split(text):
            if part in (CONTENT_OPEN, CONTENT_CLOSE):
                inside = part == CONTENT_OPEN
            elif part:
                ids.append(self.model.tokenize(part, add_special=add_special and not ids, parse_special=not inside))
        return np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)

    def image_prompt(self, image_rows: np.ndarray, question: str, history: list[dict] | None = None) -> Prompt:
        """Prompt for a user turn that starts with the image and asks `question`."""
        messages = [*(history or []), {"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}]
        text = self.render(messages)
        before, after = text.split(IMAGE_MARKER, 1)
        after_inside = before.rfind(CONTENT_OPEN) > before.rfind(CONTENT_CLOSE)  # the question follows the image
        spans = []  # add_special: llama.cpp adds BOS where the vocabulary asks for it, unless the template did
        ids_before = self.tokenize(before, add_special=not _strip(before).startswith(self.bos))
        if ids_before.size:
            spans.append(Span.text(ids_before))
        spans.append(Span.image(image_rows))
        spans.append(Span.text(self.tokenize(after, inside=after_inside)))
        return Prompt(tuple(spans))

    def text_prompt(self, question: str, history: list[dict] | None = None) -> Prompt:
        """Prompt for a user turn with no image: the blind baseline asks the same question this way."""
        text = self.render([*(history or []), {"role": "user", "content": question}])
        return Prompt((Span.text(self.tokenize(text, add_special=not _strip(text).startswith(self.bos))),))

    def follow_up(self, history: list[dict], question: str) -> np.ndarray:
        """Token ids that continue a conversation whose turns so far are `history` (text-only turn)."""
        return self._appended(history, {"role": "user", "content": question}, after_prompt=False)

    def answer_turn(self, history: list[dict], answer: str) -> np.ndarray:
        """Token ids of an assistant turn the template closes, fed after `history` and its generation prompt: how a
        transcript's earlier answers enter the caches when a conversation is rebuilt from it."""
        return self._appended(history, {"role": "assistant", "content": answer}, after_prompt=True)

    def _appended(self, history: list[dict], message: dict, after_prompt: bool) -> np.ndarray:
        """render(history + [message]) minus what the caches already hold: render(history), with its generation
        prompt when `after_prompt`. A template that rewrites earlier turns instead of appending is refused."""
        turns = [*history, message]
        wrap = self.needs_wrapping(turns)
        full = self.render(turns, add_generation_prompt=not after_prompt, wrap=wrap)
        done = self.render(history, add_generation_prompt=after_prompt, wrap=wrap)
        if not full.startswith(done):
            raise ModelError("the chat template does not extend conversations by appending")
        return self._suffix_tokens(done, full)

    def _suffix_tokens(self, done: str, full: str) -> np.ndarray:
        """Tokens of `full` after those of its prefix `done`, as a tokenizer reading the whole conversation makes
        them: the appended text alone would start a fresh tokenization (SentencePiece vocabularies, Llama 2 and
        Vicuna among them, would put a word-start space in front of it). When tokens merge across the seam, the
        appended text is tokenized on its own."""
        done_ids, full_ids = self.tokenize(done), self.tokenize(full)
        if len(full_ids) > len(done_ids) and np.array_equal(full_ids[:len(done_ids)], done_ids):
            return full_ids[len(done_ids):]
        return self.tokenize(full[len(done):])


def check_question(question: object) -> str:
    """A question as the user typed it, or InputError: not text, empty, or not encodable as UTF-8 (a terminal in
    another encoding hands Python undecodable bytes as surrogates)."""
    if not isinstance(question, str):
        raise InputError(f"the question must be text, got {type(question).__name__}")
    if not question.strip():
        raise InputError("the question is empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"the question is not valid UTF-8 text (byte {e.object[e.start:e.end]!r} at {e.start})") from e
    return question


def _strip(text: str) -> str:
    return text.replace(CONTENT_OPEN, "").replace(CONTENT_CLOSE, "")


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
