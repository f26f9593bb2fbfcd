"""`atp convert` on tiny random LLaVA checkpoints, checked against transformers on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from atp_cli.driver import SegmentedDecoder  # noqa: E402
from atp_cli.prompt_input import Prompt, Span  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.runtime.model import LlamaModel  # noqa: E402
from atp_cli.runtime.vision import ImageEncoder  # noqa: E402
from converters.convert import ConvertOptions, convert, find_pair  # noqa: E402
from tests.tiny_llava import IMAGE_TOKEN, build_tiny_llava  # noqa: E402

GRID, PATCH = 4, 4
SIZE = GRID * PATCH


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    built = {t: build_tiny_llava(root / t, t, GRID, PATCH) for t in ("clip", "dinov2", "siglip")}
    # the projector reads two hidden states concatenated (an early one keeps colour, a late one shape)
    built["dinov2-layers"] = build_tiny_llava(root / "dinov2-layers", "dinov2", GRID, PATCH, feature_layer=[1, -2])
    return built


def converted(checkpoints, tmp_path_factory, tower: str, outtype: str, mmproj_type: str):
    out = tmp_path_factory.mktemp("out") / f"{tower}-{outtype}"
    convert(checkpoints[tower], out, ConvertOptions(outtype=outtype, mmproj_type=mmproj_type))
    return find_pair(out)


def sample_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def hf_pixels(folder, image: Image.Image) -> torch.Tensor:
    import json

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    x = (np.asarray(image, np.float32) / 255 - np.array(pre["image_mean"])) / np.array(pre["image_std"])
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


def hf_image_features(folder, image) -> np.ndarray:
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=hf_pixels(folder, image))
    out = getattr(out, "pooler_output", out)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out.reshape(GRID * GRID, -1).numpy()


@pytest.mark.parametrize("tower,mmproj_type", [("clip", "f32"), ("clip", "f16"), ("dinov2", "f16"), ("siglip", "f16"),
                                               ("dinov2-layers", "f32"), ("clip", "q8_0"), ("dinov2", "q8_0"),
                                               ("clip", "bf16")])
def test_mmproj_embeddings_match_transformers(checkpoints, tmp_path_factory, tower, mmproj_type):
    model_path, mmproj_path = converted(checkpoints, tmp_path_factory, tower, "f32", mmproj_type)
    image = sample_image()
    ref = hf_image_features(checkpoints[tower], image)
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        got = enc.encode(image)
    scale = np.abs(ref).max()
    # f32: only the tanh-approximated GELU differs; f16 weights add their rounding, q8_0 more
    tol = {"f32": 2e-3, "f16": 3e-2, "q8_0": 6e-2, "bf16": 6e-2}[mmproj_type] * scale
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol, (np.abs(got - ref).max(), scale)
    cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.995, cosine.min()
    if mmproj_type == "q8_0":  # the matrices the encoder multiplies by are stored as Q8_0
        import gguf

        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(mmproj_path).tensors}
        assert types["mm.0.weight"] == "Q8_0" and types["v.blk.0.attn_q.weight"] == "Q8_0"
        assert types["v.patch_embd.weight"] == "F16" and types["v.position_embd.weight"] == "F32"
    if mmproj_type == "bf16":
        import gguf

        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(mmproj_path).tensors}
        assert types["mm.0.weight"] == types["v.blk.0.ffn_up.weight"] == "BF16"
        assert types["v.position_embd.weight"] == "F32"


def hf_logits(folder, ids: list[int], image) -> np.ndarray:
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), pixel_values=hf_pixels(folder, image))
    return out.logits[0, -1].numpy()


def prompt_ids(folder) -> tuple[list[int], list[int], list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    before = tok("USER: what is in the picture", add_special_tokens=True)["input_ids"]
    after = tok(" describe the colour ASSISTANT:", add_special_tokens=False)["input_ids"]
    return before, [image_id] * GRID * GRID, after


@pytest.mark.parametrize("outtype,atol", [("f32", 2e-3), ("f16", 2e-2)])
def test_image_prompt_logits_match_transformers(checkpoints, tmp_path_factory, outtype, atol):
    model_path, mmproj_path = converted(checkpoints, tmp_path_factory, "clip", outtype, "f32")
    image = sample_image(1)
    before, image_ids, after = prompt_ids(checkpoints["clip"])
    ref = hf_logits(checkpoints["clip"], before + image_ids + after, image)
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        rows = enc.encode(image)
        cfg = ContextConfig(n_ctx=256, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32")
        with SegmentedDecoder(model, (), cfg, readout=False) as dec:
            got = dec.prefill(Prompt((Span.text(before), Span.image(rows), Span.text(after))))
    assert np.abs(got - ref).max() <= atol, np.abs(got - ref).max()
    assert int(np.argmax(got)) == int(np.argmax(ref))


def test_q8_0_logits_are_close(checkpoints, tmp_path_factory):
    model_path, mmproj_path = converted(checkpoints, tmp_path_factory, "clip", "q8_0", "f16")
    image = sample_image(2)
    before, image_ids, after = prompt_ids(checkpoints["clip"])
    ref = hf_logits(checkpoints["clip"], before + image_ids + after, image)
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        rows = enc.encode(image)
        with SegmentedDecoder(model, (), ContextConfig(n_ctx=256), readout=False) as dec:
            got = dec.prefill(Prompt((Span.text(before), Span.image(rows), Span.text(after))))
    cos = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cos > 0.99
    assert np.argsort(-got)[:1].tolist() == np.argsort(-ref)[:1].tolist()


def test_prompts_tokenize_identically(checkpoints, tmp_path_factory):
    model_path, _ = converted(checkpoints, tmp_path_factory, "clip", "f32", "f16")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoints["clip"])
    texts = ["USER: what is in the picture? ASSISTANT:", "how many red circles are there", "a cat  on\nthe left",
             "Zebra 42 ünïcode"]
    with LlamaModel(model_path) as model:
        for text in texts:
            assert model.tokenize(text, add_special=True).tolist() == tok(text)["input_ids"], text
        assert model.meta("tokenizer.chat_template") == tok.chat_template


def test_linear_projector_runs_exactly_through_the_mlp_graph(checkpoints, tmp_path):
    """A linear projector (no linear_2) is written as mm.2(gelu(W x + b + C)) - C with mm.2 = I."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = checkpoints["clip"]
    lin = tmp_path / "linear"
    shutil.copytree(src, lin)
    state = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(0)
    n_text = state["language_model.model.embed_tokens.weight"].shape[1]
    w = (rng.standard_normal((n_text, 32)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(n_text) * 0.1).astype(np.float32)
    state = {k: v for k, v in state.items() if not k.startswith("multi_modal_projector.linear_2")}
    state["multi_modal_projector.linear_1.weight"], state["multi_modal_projector.linear_1.bias"] = w, b
    save_file(state, str(lin / "model.safetensors"), metadata={"format": "pt"})
    model_path, mmproj_path = find_pair_after(lin, tmp_path / "out")

    image = sample_image(3)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(src).eval()
    with torch.no_grad():
        hidden = hf.model.vision_tower(hf_pixels(src, image), output_hidden_states=True).hidden_states[-2]
    ref = hidden[0, 1:].numpy() @ w.T + b
    with LlamaModel(model_path) as model, ImageEncoder(mmproj_path, model) as enc:
        got = enc.encode(image)
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def find_pair_after(src, out):
    convert(src, out, ConvertOptions(outtype="f32", mmproj_type="f32"))
    return find_pair(out)
