"""The peer baseline: stock llama-cpp-python answering with its own LLaVA chat handler (mtmd), untouched.

The handler's code path is llama-cpp-python's: `Llama` + `Llava15ChatHandler` (mtmd tokenizes the prompt with
the image, encodes it and evaluates the chunks in one call). Only its prompt template is replaced, by the
model's own chat template, so that it sends the model exactly the conversation atp sends; everything that
runs is the stock code. Timings are taken from outside, around the streamed call.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from atp_cli.errors import ModelError
from atp_cli.image_input import load_image
from atp_cli.runtime.log import quiet_llama_logs

# Turn the handler's list-of-parts user content into the text atp renders ("<image>\nquestion"), then run the
# model's own template on the converted messages.
_TO_TEXT = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
    "{%- else -%}{%- set parts = namespace(t='') -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image_url' -%}"
    "{%- set parts.t = parts.t + (c['image_url'] if c['image_url'] is string else c['image_url']['url']) + '\n' -%}"
    "{%- elif c['type'] == 'text' -%}{%- set parts.t = parts.t + c['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = parts.t -%}"
    "{%- endif -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': text}] -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs -%}"
)


@dataclass
class PeerAnswer:
    text: str
    first_token_seconds: float
    decode_tokens_per_s: float
    n_prompt_tokens: int
    kv_bytes: int


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class StockLlava:
    """llama-cpp-python's `Llama` with its LLaVA chat handler on the same GGUF files; greedy answers."""

    def __init__(self, model_path: str | Path, mmproj_path: str | Path, n_ctx: int = 1024, n_threads: int = 0,
                 max_tokens: int = 16) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Llava15ChatHandler

        quiet_llama_logs()
        self.llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads or None, n_gpu_layers=0,
                                   verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{model_path} has no chat template for the stock handler to use")
        handler_cls = type("ModelTemplateLlavaHandler", (Llava15ChatHandler,),
                           {"CHAT_FORMAT": _TO_TEXT + template, "DEFAULT_SYSTEM_MESSAGE": None})
        self.llm.chat_handler = handler_cls(clip_model_path=str(mmproj_path), verbose=False)
        self.max_tokens = max_tokens
        m = self.llm.model
        n_layer, n_embd = llama_cpp.llama_model_n_layer(m), llama_cpp.llama_model_n_embd(m)
        n_head, n_head_kv = llama_cpp.llama_model_n_head(m), llama_cpp.llama_model_n_head_kv(m)
        self._kv_bytes_per_token = n_layer * 2 * (n_embd // n_head) * n_head_kv * 2  # K and V, f16 cache

    def __call__(self, image, question: str) -> PeerAnswer:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(load_image(image))}},
                                                 {"type": "text", "text": question}]}]
        self.llm.reset()
        t0 = time.perf_counter()
        first = None
        pieces = []
        for chunk in self.llm.create_chat_completion(messages, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                                     max_tokens=self.max_tokens, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if first is None:
                first = time.perf_counter()
            if delta:
                pieces.append(delta)
        end = time.perf_counter()
        first = first or end
        n_generated = max(len(pieces) - 1, 0)
        return PeerAnswer("".join(pieces).strip(), first - t0, n_generated / (end - first) if end > first else 0.0,
                          self.llm.n_tokens, self.llm.n_tokens * self._kv_bytes_per_token)

    def close(self) -> None:
        self.llm.close()
