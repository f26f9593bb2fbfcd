"""`atp_cli.Pipeline`: load a converted model folder once, then answer questions about images.

    pipe = Pipeline.from_dir("out/llava-7b", strategy="atp")
    result = pipe("photo.jpg", "What is on the table?")     # path, bytes or PIL image
    for piece in pipe.stream(image, "Describe it."): ...     # the same, streamed

A Pipeline holds one llama.cpp model, one vision encoder and one set of segment contexts: it answers one
question at a time. A second question while one is being answered (from another thread, or a second stream
opened before the first is finished) is refused with UsageError, as is any use after close(). Use one Pipeline
per thread (the weights are memory-mapped, so extra Pipelines on the same files share them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from atp_cli.driver import PrefillStats, SegmentedDecoder
from atp_cli.embedding_cache import DEFAULT_BYTES, EmbeddingCache, image_key
from atp_cli.errors import ContextLengthError, InputError, UsageError
from atp_cli.generation import stream_text
from atp_cli.image_input import load_image
from atp_cli.model_files import find_pair
from atp_cli.prefix_cache import PrefixCache
from atp_cli.prompt import ChatFormat, check_question
from atp_cli.prompt_input import Prompt, Span
from atp_cli.pruning.registry import make_strategy
from atp_cli.pruning.schema import SchemaError
from atp_cli.pruning.store import AtpWeights, read_atp
from atp_cli.pruning.base import PreLlmSelection, is_pre_llm
from atp_cli.runtime.context import ContextConfig
from atp_cli.runtime.model import LlamaModel
from atp_cli.runtime.owner import Closeable
from atp_cli.runtime.vision import ImageEncoder
from atp_cli.sampling import Sampler, SamplerConfig
from atp_cli.token_embeddings import TokenEmbeddings

log = logging.getLogger(__name__)
ImageSource = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class PipelineConfig:
    context: ContextConfig = ContextConfig()
    sampler: SamplerConfig = SamplerConfig()
    max_tokens: int = 256
    embedding_cache_bytes: int = DEFAULT_BYTES  # projected rows of recent images kept (0: encode every time)
    # first segments (layers before the first module) of recent prompts, shared by strategies with that boundary;
    # 0: off. Worth it where one question is asked with many strategies (atp bench quality)
    prefix_cache_bytes: int = 0


@dataclass
class Result:
    """An answer and what it cost: the one statistics type of the Pipeline, the chat's /stats and --json."""

    text: str
    stats: PrefillStats
    encode_seconds: float = 0.0
    first_token_seconds: float = 0.0
    decode_tokens_per_s: float = 0.0
    kv_bytes: int = 0
    visual_in: int = 0  # visual tokens entering the LLM
    strategy: str = ""
    # log-probabilities of the first answer token (vocabulary-sized float32): what fidelity to the unpruned model
    # is measured on without decoding (atp bench quality's KL and top-1 agreement)
    first_logprobs: np.ndarray | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The statistics as JSON-ready values (what `atp chat --json` and `/stats` print)."""
        st = self.stats
        return {
            "strategy": self.strategy,
            "visual_tokens_in": int(self.visual_in),
            "visual_tokens_avg": round(st.visual_tokens_avg, 2),
            "alive_per_layer": [int(x) for x in st.visual_alive_per_layer],
            "prefill_seconds": round(st.prefill_seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3),
            "kv_bytes": int(self.kv_bytes),
        }


class Pipeline(Closeable):
    def __init__(self, model_path: str | Path, mmproj_path: str | Path, strategy: str = "atp",
                 config: PipelineConfig = PipelineConfig(), **strategy_params) -> None:
        self.config = config
        self._decoder: SegmentedDecoder | None = None
        self._busy = threading.Lock()  # held while a question is being answered
        self._owner: object | None = None  # the conversation whose turns are in the caches (or a one-shot marker)
        self._closed = False
        self.last_result: Result | None = None  # statistics of the last image prefill (text and kv_bytes unset)
        self.embeddings = EmbeddingCache(config.embedding_cache_bytes)
        self.prefixes = PrefixCache(config.prefix_cache_bytes) if config.prefix_cache_bytes > 0 else None
        self.model_path = Path(model_path)
        self._token_embeddings: TokenEmbeddings | None = None
        self.model = LlamaModel(model_path)
        try:
            self.encoder = ImageEncoder(mmproj_path, self.model, config.context.n_threads)
            self.weights, self._weights_error = _read_weights(mmproj_path, self.model.n_layer, self.encoder.n_tokens())
            self.chat = ChatFormat(self.model)
            self.strategy = None
            self.set_strategy(strategy, **strategy_params)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_dir(cls, folder: str | Path, strategy: str = "atp", config: PipelineConfig = PipelineConfig(),
                 **strategy_params) -> "Pipeline":
        model, mmproj = find_pair(Path(folder))
        return cls(model, mmproj, strategy, config, **strategy_params)

    @property
    def n_visual(self) -> int:
        return self.encoder.n_tokens()

    @property
    def decoder(self) -> SegmentedDecoder:
        if self._closed or self._decoder is None:
            raise UsageError("this Pipeline is closed")
        return self._decoder

    @contextmanager
    def session(self, owner: object) -> Iterator[SegmentedDecoder]:
        """Exclusive use of the caches for one answer by `owner` (a Conversation, or a one-shot marker).

        Refuses, instead of corrupting state: a closed Pipeline, a second answer while one is running, and the
        next turn of a conversation whose caches another conversation or question has taken since."""
        decoder = self.decoder
        if not self._busy.acquire(blocking=False):
            raise UsageError("this Pipeline is already answering a question (another thread, or an unfinished "
                             "stream); use one Pipeline per thread")
        try:
            if getattr(owner, "turns", 0) and self._owner is not owner:
                raise UsageError("another conversation or question has used this Pipeline since this "
                                 "conversation's last turn; start it again (set_image) or give it its own Pipeline")
            self._owner = owner
            yield decoder
        finally:
            self._busy.release()

    def release(self, owner: object) -> None:
        """`owner` no longer needs its turns kept (a conversation that starts over)."""
        if self._owner is owner:
            self._owner = None

    def set_strategy(self, name: str, **params) -> None:
        """Switch the pruning strategy; 'atp' without trained weights falls back to 'atp-free' with a warning.

        ATP weights that break the schema are refused for 'atp' and 'atp-free' (the error names the key); every
        other strategy runs without them."""
        if name in ("atp", "atp-free") and self._weights_error is not None:
            raise self._weights_error
        if name == "atp" and (self.weights is None or not self.weights.mlps):
            log.warning("the vision projector carries no trained ATP weights: running the training-free 'atp-free' "
                        "(atp calibrate sets its levels; atp convert --attach adds trained weights)")
            name = "atp-free"
        self.use_strategy(make_strategy(name, self.model.n_layer, self.n_visual, self.weights, **params))

    def use_strategy(self, strategy) -> None:
        """Install a strategy object (e.g. one built with boundaries of its own); the segment contexts are rebuilt
        only when its boundaries differ from the current ones."""
        if self._closed:
            raise UsageError("this Pipeline is closed")
        if self._busy.locked():
            raise UsageError("cannot change the strategy while a question is being answered")
        boundaries = strategy.boundaries(self.model.n_layer)
        if self._decoder is None or self._decoder.boundaries != boundaries:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            self._decoder = SegmentedDecoder(self.model, boundaries, self.config.context, readout=bool(boundaries))
            self._decoder.prefix_cache = self.prefixes
        self.strategy = strategy
        self._owner = None  # turns pruned by the previous strategy are not continued by this one

    def prompt(self, image: ImageSource | None, question: str, history: list[dict] | None = None,
               max_tokens: int | None = None) -> tuple[Prompt, float]:
        """The prompt for one image and question (no image: the question alone) after `history` (e.g. a system
        message), and the seconds spent encoding; refused when it leaves no room for `max_tokens` (default: the
        configured maximum) in the context."""
        check_question(question)
        if image is None:
            prompt, seconds = self.chat.text_prompt(question, history), 0.0
        else:
            t0 = time.perf_counter()
            rows = self.encode(load_image(image))
            seconds = time.perf_counter() - t0
            prompt = self.chat.image_prompt(rows, question, history)
            if is_pre_llm(self.strategy):
                prompt = _preselect(prompt, self.strategy, self.question_embeddings(question))
        n_ctx = self.decoder.contexts[0].n_ctx
        max_tokens = self.config.max_tokens if max_tokens is None else max_tokens
        if len(prompt) + max_tokens > n_ctx:
            asked = self.config.context.n_ctx
            note = f" (n_ctx {asked}, which llama.cpp rounds up to a multiple of 256)" if asked != n_ctx else ""
            raise ContextLengthError(f"prompt of {len(prompt)} tokens + {max_tokens} to generate does not fit "
                                     f"the context of {n_ctx} tokens{note}")
        return prompt, seconds

    def question_embeddings(self, question: str) -> np.ndarray:
        """(m, d) input embeddings of the question's tokens, read from the model file (what instruction-conditioned
        pre-LLM selection compares the visual rows with)."""
        if self._token_embeddings is None:
            self._token_embeddings = TokenEmbeddings(self.model_path)
        return self._token_embeddings.rows(self.chat.tokenize(question, inside=True))

    def encode(self, image: Image.Image) -> np.ndarray:
        """The image's projected rows (read-only), from the embedding cache when this content was encoded before."""
        key = image_key(image)
        rows = self.embeddings.get(key)
        if rows is None:
            rows = self.embeddings.put(key, self.encoder.encode(image))
        return rows

    def prefill_image(self, image: ImageSource | None, question: str, history: list[dict] | None = None,
                      max_tokens: int | None = None) -> np.ndarray:
        """Start a conversation: encode, build the prompt, prefill with pruning; returns the next-token logits.
        Without an image the question alone is prefilled (what a model that does not look answers)."""
        prompt, encode_seconds = self.prompt(image, question, history, max_tokens)
        self.decoder.reset()
        keep = self.strategy if self.decoder.boundaries and image is not None else None
        logits = self.decoder.prefill(prompt, keep)
        self.last_result = Result("", self.decoder.stats, encode_seconds=encode_seconds,
                                  visual_in=int(prompt.visual_mask().sum()), strategy=self.strategy.name,
                                  first_logprobs=log_softmax(logits))
        return logits

    def conversation(self):
        """A multi-turn chat over this Pipeline (see atp_cli.conversation)."""
        from atp_cli.conversation import Conversation

        return Conversation(self)

    def stream(self, image: ImageSource | None, question: str, result: Result | None = None) -> Iterator[str]:
        """Answer text as it is generated; `result` (if given) is filled with the statistics. `image` None asks the
        question without any image (the blind baseline of `atp bench quality`)."""
        with self.session(_ONE_SHOT):
            yield from self._stream(image, question, result)

    def _stream(self, image: ImageSource, question: str, result: Result | None) -> Iterator[str]:
        t0 = time.perf_counter()
        logits = self.prefill_image(image, question)
        first = time.perf_counter()
        prefilled = self.last_result
        n_generated = 0
        pieces = []
        for piece in stream_text(self.decoder, logits, Sampler(self.config.sampler), self.config.max_tokens):
            n_generated += 1
            pieces.append(piece)
            yield piece
        end = time.perf_counter()
        if result is not None:
            result.text = "".join(pieces)
            result.stats = prefilled.stats
            result.encode_seconds = prefilled.encode_seconds
            result.first_token_seconds = first - t0 + prefilled.stats.reused_seconds  # as if computed here
            result.decode_tokens_per_s = n_generated / (end - first) if end > first and n_generated else 0.0
            result.kv_bytes = self.decoder.kv_used_bytes()
            result.visual_in = prefilled.visual_in
            result.strategy = prefilled.strategy
            result.first_logprobs = prefilled.first_logprobs

    def __call__(self, image: ImageSource | None, question: str) -> Result:
        result = Result("", PrefillStats())
        for _ in self.stream(image, question, result):
            pass
        return result

    def close(self) -> None:
        """Free the native resources; idempotent. Refused while a question is being answered."""
        if self._closed:
            return
        if not self._busy.acquire(blocking=False):
            raise UsageError("cannot close this Pipeline while it is answering a question")
        try:
            self._closed = True
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            if getattr(self, "encoder", None) is not None:
                self.encoder.close()
            if getattr(self, "model", None) is not None:
                self.model.close()
        finally:
            self._busy.release()


_ONE_SHOT = object()  # the owner of the caches during a one-shot answer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p of each vocabulary entry, float32, computed in float64 so that tiny probabilities keep their value."""
    z = np.asarray(logits, np.float64).reshape(-1)
    z = z - z.max()
    return (z - np.log(np.exp(z).sum())).astype(np.float32)


def _read_weights(mmproj: str | Path, n_layer: int, n_visual: int) -> tuple[AtpWeights | None, SchemaError | None]:
    """The mmproj's ATP weights checked against this model, or the schema error that rules them out."""
    try:
        weights = read_atp(mmproj)
        if weights is not None:
            weights.validate(n_layer, n_visual, where=str(mmproj))
        return weights, None
    except SchemaError as e:
        log.warning("ignoring the ATP weights of %s: %s", mmproj, e)
        return None, e




def _preselect(prompt: Prompt, strategy: PreLlmSelection, query: np.ndarray) -> Prompt:
    """Replace the image span by the rows a pre-LLM strategy keeps, at their original positions."""
    spans, positions = [], []
    start = 0
    for span in prompt.spans:
        if span.is_visual:
            rows, idx = strategy.select(span.embd, query)
            spans.append(Span.image(rows))
            positions.append(start + idx)
            origin = start
        else:
            spans.append(span)
            positions.append(np.arange(start, start + len(span)))
        start += len(span)
    return Prompt(tuple(spans), positions=np.concatenate(positions).astype(np.int32), image_origin=origin)
