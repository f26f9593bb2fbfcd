"""The default model assembles from packaged weights + committed artifacts and answers through the Pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnx")  # the tower weights are read from an ONNX file

from atp_cli.data.scenes import make_example  # noqa: E402
from atp_cli.default_model import PROJECTOR, build_default_model  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402


@pytest.mark.skipif(not PROJECTOR.is_file(), reason="no trained projector committed")
def test_default_model_answers_with_576_visual_tokens(tmp_path):
    folder = build_default_model(tmp_path / "default", force=True)
    ex = make_example("val", 0)
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024), max_tokens=6)
    with Pipeline.from_dir(folder, "none", cfg) as pipe:
        full = pipe(ex.image, ex.question)
        assert full.visual_in == 576 and full.stats.visual_tokens_avg == 576
        pipe.set_strategy("atp-free")
        pruned = pipe(ex.image, ex.question)
        assert pruned.stats.visual_tokens_avg < 576
        assert full.text and pruned.text
    model_file = next(folder.glob("model-*.gguf"))
    built = model_file.stat().st_mtime_ns
    assert build_default_model(folder) == folder and model_file.stat().st_mtime_ns == built  # cached: not rebuilt
    (folder / "artifacts.sha256").write_text("other artifacts")
    build_default_model(folder)  # artifacts changed: rebuilt
    assert next(folder.glob("model-*.gguf")).stat().st_mtime_ns != built


def test_artifacts_digest_follows_the_folder_it_reads(tmp_path):
    import shutil

    from atp_cli.default_model import ARTIFACTS, artifacts_digest

    other = tmp_path / "run"
    shutil.copytree(ARTIFACTS, other)
    assert artifacts_digest(other) == artifacts_digest()
    (other / "atp.safetensors").unlink()  # a run without ATP modules
    assert artifacts_digest(other) != artifacts_digest()


@pytest.mark.skipif(not PROJECTOR.is_file(), reason="no trained projector committed")
@pytest.mark.parametrize("max_tokens", [12, 1])  # answers that end with the end of turn, and answers cut short
def test_a_rebuilt_conversation_continues_as_the_live_one(tmp_path_factory, max_tokens):
    """Live turns are closed in the caches as the chat template closes them, so a conversation rebuilt from its
    transcript (another server replica; a client that sends the whole history) holds the same tokens and answers
    the same as the one that lived through its turns."""
    folder = build_default_model(tmp_path_factory.getbasetemp() / "default-shared")
    image = Path(__file__).resolve().parents[1] / "atp_cli" / "examples" / "shapes.png"
    cfg = PipelineConfig(context=ContextConfig(n_ctx=1024), max_tokens=max_tokens)
    questions = ["What colour is the triangle?", "What colour is the circle?", "How many shapes are there?"]
    with Pipeline.from_dir(folder, "atp", cfg) as pipe:
        live = pipe.conversation()
        live.set_image(image, "Answer in one word.")
        answers = ["".join(live.ask(q)) for q in questions[:2]]
        position = pipe.decoder.next_pos
        last = "".join(live.ask(questions[2]))
        rebuilt = pipe.conversation()
        rebuilt.set_image(image, "Answer in one word.")
        rebuilt.load([m for q, a in zip(questions, answers)
                      for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})])
        assert pipe.decoder.next_pos == position
        assert "".join(rebuilt.ask(questions[2])) == last
