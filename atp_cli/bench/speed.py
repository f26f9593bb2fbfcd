"""Speed at real scale: random-weight GGUFs with the shape of real models, stock llama.cpp vs atp side by side.

Only time and memory are measured here: the weights are random, so the answers are meaningless. The prompt
is the one a LLaVA user sends: text, the image's 576 visual rows from a CLIP ViT-L/336-shaped encoder (random
weights, encoded by llama.cpp's mtmd for every run, so time to first token includes it), text. Every figure is
the median of several runs; the configurations take turns inside each run (rotating who goes first), so drift
of the machine hits all of them alike and the ratios compare side-by-side measurements.
"""

from __future__ import annotations

import json

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from atp_cli.bench.contention import spread
from atp_cli.bench.memory import PeakRss
from atp_cli.driver import SegmentedDecoder
from atp_cli.pruning.base import ModuleInput
from atp_cli.pruning.cdpruner import CDPruner
from atp_cli.prompt_input import Prompt, Span
from atp_cli.pruning.config import default_boundaries
from atp_cli.runtime.context import ContextConfig
from atp_cli.runtime.model import LlamaModel
from atp_cli.runtime.vision import ImageEncoder
from converters.quantize import quantize_gguf
from converters.random_llama import LlamaShape, write_llama_gguf

N_VISUAL, N_BEFORE, N_AFTER, N_DECODE = 576, 10, 20, 32
SHAPES = {  # name -> (decoder shape, label)
    "7b": (LlamaShape(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008, n_ctx_train=4096),
           "LLaVA-1.5-7B shape (32 layers, n_embd 4096, n_ff 11008)"),
    "1b": (LlamaShape(n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192, n_ctx_train=4096),
           "~1.1B llama shape (16 layers, n_embd 2048, GQA 32/8)"),
}


@dataclass(frozen=True)
class Schedule:
    """Keep a fraction of the *original* visual tokens from each boundary on (the strongest text->vision)."""

    name: str
    boundaries: tuple[int, ...]
    keep: tuple[float, ...]

    def token_layer_ratio(self, n_layer: int) -> float:
        edges = [0, *self.boundaries, n_layer]
        fracs = [1.0, *self.keep]
        return sum((e - b) * f for b, e, f in zip(edges[:-1], edges[1:], fracs)) / n_layer

    def keep_fn(self, n_visual: int = N_VISUAL) -> Callable[[ModuleInput], np.ndarray]:
        fractions = dict(zip(self.boundaries, self.keep))

        def keep(view: ModuleInput) -> np.ndarray:
            n = max(1, round(fractions[view.boundary] * n_visual))
            order = np.argsort(-view.attn_tv.mean(0), kind="stable")[:n]
            return np.sort(view.visual_pos[order])

        return keep


def budget_schedule(n_layer: int, ratio: float) -> Schedule:
    """ATP's three boundaries with keep fractions k, k/2, k/4 chosen so that the token-layer ratio is `ratio`."""
    bounds = tuple(default_boundaries(n_layer))
    edges = [*bounds, n_layer]
    weight = sum((e - b) / 2**i for i, (b, e) in enumerate(zip(edges[:-1], edges[1:])))
    k = (ratio * n_layer - bounds[0]) / weight
    if not 0 < k <= 1:
        raise ValueError(f"a token-layer ratio of {ratio} cannot be met after layer {bounds[0]} of {n_layer}")
    return Schedule(f"atp schedule {ratio:.0%}", bounds, tuple(k / 2**i for i in range(len(bounds))))


def hybrid_plan(n_layer: int, n_visual: int, budget: float) -> tuple[int, Schedule]:
    """The hybrid's shape at `budget`: CDPruner keeps twice the budget before the language model (all of them when
    that is more than there are), then ATP's boundaries keep k, k/2, k/4 of those so that the average is `budget`."""
    pre = min(n_visual, round(2 * budget))
    schedule = budget_schedule(n_layer, budget / pre)
    return pre, Schedule(f"hybrid: cdpruner {pre} + schedule", schedule.boundaries, schedule.keep)


def random_model(workdir: Path, key: str, quant: str = "q4_k_m") -> Path:
    """The random-weight GGUF of shape `key`, written (streamed f16, then quantized) once and cached."""
    shape = SHAPES[key][0]
    out = workdir / f"random-{key}.{quant}.gguf"
    if not out.exists():
        f16 = write_llama_gguf(workdir / f"random-{key}.f16.gguf", shape, f16=True)
        try:
            quantize_gguf(f16, out, quant)
        finally:
            f16.unlink(missing_ok=True)
    return out


CLIP_L = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
          "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu"}


def random_clip_checkpoint(out: Path, n_embd: int, vision: dict = CLIP_L, seed: int = 0) -> Path:
    """A llava-hf folder with a random CLIP tower (23 blocks run: LLaVA's feature layer -2) and a 2-layer MLP
    projector to `n_embd`, written with numpy (speed depends on shapes, not values; no torch needed)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    d, ff, n = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    grid = vision["image_size"] // vision["patch_size"]
    normal = lambda *shape: (0.02 * rng.standard_normal(shape, np.float32))  # noqa: E731
    t = {"vision_tower.embeddings.patch_embedding.weight": normal(d, 3, vision["patch_size"], vision["patch_size"]),
         "vision_tower.embeddings.class_embedding": normal(d),
         "vision_tower.embeddings.position_embedding.weight": normal(grid * grid + 1, d),
         "vision_tower.pre_layrnorm.weight": np.ones(d, np.float32), "vision_tower.pre_layrnorm.bias": np.zeros(d, np.float32),
         "multi_modal_projector.linear_1.weight": normal(n_embd, d), "multi_modal_projector.linear_1.bias": normal(n_embd),
         "multi_modal_projector.linear_2.weight": normal(n_embd, n_embd),
         "multi_modal_projector.linear_2.bias": normal(n_embd)}
    for i in range(n - 1):
        p = f"vision_tower.encoder.layers.{i}."
        for name, shape in (("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (d, d)), ("self_attn.v_proj", (d, d)),
                            ("self_attn.out_proj", (d, d)), ("mlp.fc1", (ff, d)), ("mlp.fc2", (d, ff))):
            t[p + name + ".weight"], t[p + name + ".bias"] = normal(*shape), normal(shape[0])
        for norm in ("layer_norm1", "layer_norm2"):
            t[p + norm + ".weight"], t[p + norm + ".bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "model.safetensors"))
    text = {"model_type": "llama", "hidden_size": n_embd, "num_hidden_layers": 1, "num_attention_heads": 32,
            "intermediate_size": 32, "vocab_size": 300}
    config = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "vision_config": vision,
              "text_config": text, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
              "projector_hidden_act": "gelu", "image_seq_length": grid * grid}
    (out / "config.json").write_text(json.dumps(config))
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.481, 0.458, 0.408], "image_std": [0.269, 0.261, 0.276],
         "crop_size": {"height": vision["image_size"], "width": vision["image_size"]}}))
    return out


def random_clip_l_mmproj(workdir: Path, n_embd: int) -> Path:
    """A random CLIP ViT-L/14 at 336 px (LLaVA-1.5's tower) + 2-layer MLP projector to `n_embd`, as an f16 mmproj."""
    out = workdir / f"random-clip-l-336-to-{n_embd}.mmproj.gguf"
    if out.exists():
        return out
    from converters.checkpoint import open_checkpoint
    from converters.mmproj import write_mmproj

    ckpt_dir = random_clip_checkpoint(workdir / f"clip-l-ckpt-{n_embd}", n_embd)
    tmp = out.with_name(out.name + ".part")
    write_mmproj(open_checkpoint(ckpt_dir), tmp, image_size=336, keep_cls=False)
    tmp.replace(out)
    import shutil

    shutil.rmtree(ckpt_dir)
    return out


def bench_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (336, 336, 3), dtype=np.uint8))


@dataclass
class SpeedConfig:
    """One row: a decoder, its keep rule, and how many of the encoded visual rows enter the language model (an
    evenly spaced subset for the limit rows, CDPruner's selection for the hybrid: `pre`, timed with the rest)."""

    name: str
    decoder: SegmentedDecoder
    keep: Callable[[ModuleInput], np.ndarray] | None
    n_visual_in: int
    token_layer_ratio: float
    pre: CDPruner | None = None
    query: np.ndarray | None = None  # the question's token embeddings, for `pre`
    budget: float | None = None  # the average it was built for (None: stock with every token)
    kind: str = "stock"  # stock, limit, atp, hybrid


def timed_ttft_run(cfg: SpeedConfig, encoder: ImageEncoder, image: Image.Image, text: tuple[np.ndarray, np.ndarray],
                   n_decode: int = N_DECODE) -> dict:
    """Encode the image, prefill, then decode greedily: the user's path from image to answer, timed."""
    dec = cfg.decoder
    dec.reset()
    t0 = time.perf_counter()
    rows = encoder.encode(image)
    t_enc = time.perf_counter()
    spans = (Span.text(text[0]), Span.image(rows), Span.text(text[1]))
    if cfg.pre is not None:  # the hybrid: selected before the language model, at their original positions
        n0, n_image = len(text[0]), len(rows)
        kept, idx = cfg.pre.select(rows, cfg.query)
        positions = np.concatenate([np.arange(n0), n0 + idx, n0 + n_image + np.arange(len(text[1]))])
        prompt = Prompt((spans[0], Span.image(kept), spans[2]), positions=positions.astype(np.int32), image_origin=n0)
    elif cfg.n_visual_in < len(rows):  # stock given fewer visual tokens: an evenly spaced subset, as a user feeds it
        subset = rows[np.linspace(0, len(rows) - 1, cfg.n_visual_in).round().astype(int)]
        prompt = Prompt((spans[0], Span.image(subset), spans[2]))
    else:
        prompt = Prompt(spans)
    logits = dec.prefill(prompt, cfg.keep)
    token = int(np.argmax(logits))
    t_first = time.perf_counter()
    kv_prompt = dec.kv_used_bytes()
    for _ in range(n_decode):
        token = int(np.argmax(dec.extend([token])))
    t_end = time.perf_counter()
    return {"encode_s": t_enc - t0, "prefill_s": dec.stats.prefill_seconds, "ttft_s": t_first - t0,
            "decode_tok_s": n_decode / (t_end - t_first), "kv_prompt_mib": kv_prompt / 2**20,
            "kv_used_mib": dec.kv_used_bytes() / 2**20,
            "kv_alloc_mib": sum(st.total_bytes for st in dec.kv_stats()) / 2**20}


def bench_shape(key: str, workdir: Path, runs: int, threads: int, budgets: tuple[float, ...],
                on_run: Callable[[str], None] | None = None, n_ctx: int = 4096) -> dict:
    """The random model of shape `key` (built once into `workdir`) with a random CLIP ViT-L/336 encoder."""
    shape, label = SHAPES[key]
    model_path = random_model(workdir, key)
    mmproj_path = random_clip_l_mmproj(workdir, shape.n_embd)
    return {"shape": key, "label": label,
            **bench_files(model_path, mmproj_path, runs, threads, budgets, on_run, n_ctx=n_ctx)}


def row_plan(budgets: tuple[float, ...], n_layer: int, n_visual: int = N_VISUAL) -> list[tuple[str, float | None]]:
    """The rows a run measures, as (kind, budget): stock, then per budget the limit row, atp's schedule where it can
    meet the budget after its first boundary, and the hybrid."""
    plan: list[tuple[str, float | None]] = [("stock", None)]
    for b in budgets:
        plan += [("limit", b)] + [("atp", b)] * _schedule_fits(n_layer, b / n_visual) + [("hybrid", b)]
    return plan


def _schedule_fits(n_layer: int, ratio: float) -> bool:
    try:
        budget_schedule(n_layer, ratio)
        return True
    except ValueError:
        return False


def config_makers(model: LlamaModel, model_path: Path, n_visual: int, ctx: ContextConfig,
                  budgets: tuple[float, ...], question: np.ndarray) -> list[Callable[[], SpeedConfig]]:
    """The rows of `row_plan`, each as a function that builds it (its decoder allocates on the call)."""
    from atp_cli.token_embeddings import TokenEmbeddings

    query = TokenEmbeddings(model_path).rows(question)
    stock = lambda: SegmentedDecoder(model, (), ctx, readout=False, stock=True)  # noqa: E731
    segmented = lambda s: SegmentedDecoder(model, s.boundaries, ctx, readout=True)  # noqa: E731

    def maker(kind: str, b: float | None) -> Callable[[], SpeedConfig]:
        if kind == "stock":
            return lambda: SpeedConfig("stock", stock(), None, n_visual, 1.0)
        if kind == "limit":
            return lambda: SpeedConfig(f"stock, {b:.0f} visual tokens in", stock(), None, round(b), b / n_visual,
                                       budget=b, kind=kind)
        if kind == "atp":
            s = budget_schedule(model.n_layer, b / n_visual)
            return lambda: SpeedConfig(s.name, segmented(s), s.keep_fn(n_visual), n_visual,
                                       s.token_layer_ratio(model.n_layer), budget=b, kind=kind)
        pre, s = hybrid_plan(model.n_layer, n_visual, b)
        return lambda: SpeedConfig(s.name, segmented(s), s.keep_fn(pre), pre,
                                   s.token_layer_ratio(model.n_layer) * pre / n_visual, CDPruner(pre), query,
                                   budget=b, kind=kind)

    return [maker(kind, b) for kind, b in row_plan(budgets, model.n_layer, n_visual)]


def bench_files(model_path: Path, mmproj_path: Path, runs: int, threads: int, budgets: tuple[float, ...],
                on_run: Callable[[str], None] | None = None, n_decode: int = N_DECODE, n_ctx: int = 4096) -> dict:
    """Stock (every visual token), and per budget: stock given that many visual tokens (the limit), atp's schedule
    at that average, and the hybrid (CDPruner before the language model, the schedule inside it) at that average."""
    model = LlamaModel(model_path)
    encoder = ImageEncoder(mmproj_path, model, threads)
    n_visual = encoder.n_tokens()
    ctx = ContextConfig(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads)
    rng = np.random.default_rng(0)
    text = (rng.integers(3, model.n_vocab, N_BEFORE), rng.integers(3, model.n_vocab, N_AFTER))
    configs = [make() for make in config_makers(model, model_path, n_visual, ctx, budgets, text[1])]
    image = bench_image()
    samples: dict[str, list[dict]] = {c.name: [] for c in configs}
    peaks = {c.name: 0.0 for c in configs}
    try:
        for c in configs:  # warm-up
            timed_ttft_run(c, encoder, image, text, n_decode=2)
        for run in range(runs):
            for c in configs[run % len(configs):] + configs[: run % len(configs)]:
                with PeakRss() as peak:
                    samples[c.name].append(timed_ttft_run(c, encoder, image, text, n_decode))
                peaks[c.name] = max(peaks[c.name], peak.mib)
                if on_run is not None:
                    on_run(c.name)
    finally:
        for c in configs:
            c.decoder.close()
        encoder.close()
        model.close()
    rows = []
    for c in configs:
        med = {k: statistics.median(s[k] for s in samples[c.name]) for k in samples[c.name][0]}
        rows.append({"config": c.name, "kind": c.kind, "budget": c.budget, "visual_in": c.n_visual_in, "tokens_avg": c.token_layer_ratio * n_visual,
                     "peak_rss_mib": peaks[c.name], "ttft_spread": spread([x["ttft_s"] for x in samples[c.name]]),
                     **med})
    base = rows[0]
    for r in rows:
        r["prefill_vs_stock"] = base["prefill_s"] / r["prefill_s"]
        r["ttft_vs_stock"] = base["ttft_s"] / r["ttft_s"]
        r["kv_prompt_vs_stock"] = r["kv_prompt_mib"] / base["kv_prompt_mib"]
        r["kv_vs_stock"] = r["kv_used_mib"] / base["kv_used_mib"]
        r["kv_alloc_vs_stock"] = r["kv_alloc_mib"] / base["kv_alloc_mib"]
        r["decode_vs_stock"] = r["decode_tok_s"] / base["decode_tok_s"]
    return {"runs": runs, "threads": threads, "budgets": list(budgets), "n_visual": n_visual, "n_ctx": n_ctx,
            "rows": rows}
