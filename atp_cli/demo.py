"""`atp demo`: a smoke test of the segmented decoder and its pruning with nothing but the packaged SmolLM2 (the
image seen through the weight-free colour probe); `atp chat` is the real thing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from atp_cli.assets import smollm2_gguf
from atp_cli.colour_probe import ColourProbe
from atp_cli.driver import SegmentedDecoder
from atp_cli.generation import stream_text
from atp_cli.image_input import load_image
from atp_cli.prompt_input import Prompt, Span
from atp_cli.pruning.baselines import FastV
from atp_cli.runtime.context import ContextConfig
from atp_cli.runtime.model import LlamaModel
from atp_cli.sampling import Sampler

GRID = 24  # 24 x 24 = 576 visual tokens, as LLaVA-1.5


def chatml_prompt(model: LlamaModel, image_rows, question: str) -> Prompt:
    """SmolLM2's ChatML template with the image span inside the user turn."""
    before = "<|im_start|>user\nThe picture, as a 24x24 grid of colour words:\n"
    after = f"\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return Prompt((Span.text(model.tokenize(before)), Span.image(image_rows), Span.text(model.tokenize(after))))


def run_demo(image: Path, question: str, keep_ratio: float, layer: int, max_tokens: int,
             threads: int) -> Iterator[str]:
    """Yield the header, the streamed answer and a statistics line."""
    picture = load_image(image)
    strategy = FastV(k=layer, keep_ratio=keep_ratio)
    with LlamaModel(smollm2_gguf()) as model:
        rows = ColourProbe(model).encode(picture, GRID)
        prompt = chatml_prompt(model, rows, question)
        config = ContextConfig(n_ctx=1024, n_threads=threads)
        boundaries = strategy.boundaries(model.n_layer) if keep_ratio < 1.0 else []
        with SegmentedDecoder(model, boundaries, config) as dec:
            logits = dec.prefill(prompt, strategy if boundaries else None)
            yield f"image: {image}\nquestion: {question}\nanswer: "
            yield from stream_text(dec, logits, Sampler(), max_tokens)
            st = dec.stats
            yield (f"\n[visual tokens: {st.n_visual} in, {st.visual_tokens_avg:.0f} averaged over "
                   f"{model.n_layer} layers; prefill {st.prefill_seconds:.2f} s; "
                   f"KV in use {dec.kv_used_bytes() / 2**20:.1f} MiB]")
