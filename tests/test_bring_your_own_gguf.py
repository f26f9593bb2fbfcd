"""A model + mmproj pair made by llama.cpp's own tools (its HF converter, its quantizer, its LLaVA image-encoder
converter) runs in atp as it comes: `Pipeline(model, mmproj)` and `atp chat --gguf --mmproj`, with the training-free
strategies since such an mmproj carries no ATP weights."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from atp_cli.cli import cli  # noqa: E402
from atp_cli.paths import cache_dir  # noqa: E402
from atp_cli.pipeline import Pipeline  # noqa: E402
from converters.convert import ConvertOptions, convert, find_pair  # noqa: E402
from converters.llm import LLAMA_CPP_VERSION, tools_dir  # noqa: E402
from converters.quantize import quantize_gguf  # noqa: E402
from tests.gguf_edit import rewrite_gguf  # noqa: E402
from tests.test_pipeline import CFG, images  # noqa: E402
from tests.tiny_llava import build_tiny_llava  # noqa: E402

LEGACY = "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py"
# llama.cpp's LLaVA-1.5 image-encoder converter was written for transformers < 5, whose CLIPVisionModel wrapped its
# layers in `.vision_model`; this shim restores that attribute and those tensor names and changes nothing else
SHIM = """
import runpy, sys
from transformers import CLIPVisionModel
if not hasattr(CLIPVisionModel, "vision_model"):
    CLIPVisionModel.vision_model = property(lambda self: self)
    _load = CLIPVisionModel.from_pretrained

    def from_pretrained(*args, **kwargs):  # loaded as saved; its tensor names then as the script expects them
        model = _load(*args, **kwargs)
        names = model.state_dict
        model.state_dict = lambda *a, **k: {"vision_model." + n: t for n, t in names(*a, **k).items()}
        return model

    CLIPVisionModel.from_pretrained = from_pretrained
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def llama_cpp_image_encoder_converter(dest: Path) -> Path:
    """llama.cpp's LLaVA-1.5 image-encoder converter, from the pinned sdist that `make setup` downloaded."""
    sdist = cache_dir("sdist") / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not sdist.is_file():
        pytest.skip(f"the llama.cpp sdist is not in {sdist.parent} (make setup puts it there)")
    member = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/{LEGACY}"
    with tarfile.open(sdist) as tar:
        data = tar.extractfile(member).read()
    script = dest / "convert_image_encoder_to_gguf.py"
    script.write_bytes(data)
    return script


@pytest.fixture(scope="module")
def ecosystem_pair(tmp_path_factory):
    """(model, mmproj) written by llama.cpp's tools, and atp convert's folder of the same checkpoint."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from converters.checkpoint import normalise_name

    root = tmp_path_factory.mktemp("byo")
    ckpt = build_tiny_llava(root / "ckpt", "clip", grid=8, patch=4, text_layers=4, seed=7)
    # the language model: llama.cpp's convert_hf_to_gguf.py, then llama.cpp's quantizer
    f16 = root / "ggml-model-f16.gguf"
    script = tools_dir() / "convert_hf_to_gguf.py"
    env_path = f"{script.parent}"
    subprocess.run([sys.executable, str(script), str(ckpt), "--outfile", str(f16), "--outtype", "f16"], check=True,
                   capture_output=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    model = quantize_gguf(f16, root / "ggml-model-q8_0.gguf", "q8_0")
    # the mmproj: llama.cpp's legacy LLaVA path (vision tower as a CLIP model + the projector file)
    # (what llava_surgery does: the tower as a CLIP vision model, the projector as its own file)
    state = {normalise_name(k): v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    config = json.loads((ckpt / "config.json").read_text())
    tower = CLIPVisionModel(CLIPVisionConfig(**config["vision_config"]))
    prefix = "vision_tower."
    missing, unexpected = tower.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                                strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    vision = root / "vision"
    tower.save_pretrained(vision)
    torch.save({k: v for k, v in state.items() if k.startswith("multi_modal_projector.")}, root / "llava.projector")
    out = root / "mmproj"
    converter = llama_cpp_image_encoder_converter(root)
    subprocess.run([sys.executable, "-c", SHIM, str(converter), "-m", str(vision), "--llava-projector", str(root / "llava.projector"),
                    "--output-dir", str(out), "--clip-model-is-vision", "--image-mean", "0.5", "0.4", "0.3",
                    "--image-std", "0.25", "0.2", "0.3"], check=True, capture_output=True)
    mmproj = out / "mmproj-model-f16.gguf"
    convert(ckpt, root / "atp", ConvertOptions(outtype="f16"))
    return model, mmproj, root / "atp"


def test_the_pair_runs_with_the_training_free_strategies(ecosystem_pair, caplog):
    model, mmproj, _ = ecosystem_pair
    with caplog.at_level("WARNING"), Pipeline(model, mmproj, "atp", CFG) as pipe:
        assert pipe.weights is None and pipe.strategy.name == "atp-free"
        assert "carries no trained ATP weights" in caplog.text
        result = pipe(images(1)[0], "what is in the picture")
        assert result.visual_in == 64 and result.stats.visual_tokens_avg < 64
        for name in ("fastv", "uniform", "none"):
            pipe.set_strategy(name)
            assert isinstance(pipe(images(1)[0], "what is in the picture").text, str)


def test_llama_cpp_s_mmproj_is_run_as_llama_cpp_defines_it(ecosystem_pair, tmp_path):
    """The same weights in both files; llama.cpp's legacy file has no feature_layer key, and for such a file
    mtmd's llava graph stops one block before the stored block_count (which the converter already cut by one: the
    upstream double layer drop). So its rows equal atp's mmproj told to read hidden state 1 instead of 2."""
    model, mmproj, atp_folder = ecosystem_pair
    atp_model, atp_mmproj = find_pair(atp_folder)
    one_block = rewrite_gguf(atp_mmproj, tmp_path / "mmproj-one-block.gguf", {"clip.vision.feature_layer": [1]})
    image = images(1, seed=3)[0]
    with Pipeline(model, mmproj, "none", CFG) as a, Pipeline(atp_model, one_block, "none", CFG) as b:
        ra, rb = a.encoder.encode(image), b.encoder.encode(image)
    cos = (ra * rb).sum(1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
    assert ra.shape == rb.shape == (64, 64)
    assert cos.min() > 0.999, cos.min()


def test_atp_chat_takes_the_two_files(ecosystem_pair, tmp_path):
    model, mmproj, _ = ecosystem_pair
    image = tmp_path / "x.png"
    images(1)[0].save(image)
    res = CliRunner().invoke(cli, ["chat", "--gguf", str(model), "--mmproj", str(mmproj), "--image", str(image),
                                   "--max-tokens", "4", "--n-ctx", "512", "--json", "what is it"],
                             standalone_mode=False, catch_exceptions=True)
    assert res.exit_code == 0, res.output
    assert '"strategy": "atp-free"' in res.output and '"visual_tokens_in": 64' in res.output
