"""`atp chat`: one-shot JSON, keep map, interactive commands, multi-turn memory (tiny converted LLaVA)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from atp_cli.cli import cli  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from tests.test_pipeline import folder, images  # noqa: E402,F401

ARGS = ["--max-tokens", "6", "--n-ctx", "512"]


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "in.png"
    images(1, seed=4)[0].save(path)
    return path


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, standalone_mode=False, catch_exceptions=True)


def test_one_shot_json_and_keep_map(folder, image_file, tmp_path):  # noqa: F811
    keep = tmp_path / "keep.png"
    res = run("chat", "--model", folder, "--image", image_file, "--strategy", "fastv", "--json", "--show-keep", keep,
              *ARGS, "what is in the picture")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["strategy"] == "fastv" and data["visual_tokens_in"] == 64
    assert data["alive_per_layer"][0] == 64 and data["alive_per_layer"][-1] == 16
    assert isinstance(data["answer"], str) and data["kv_bytes"] > 0
    with Image.open(keep) as im:
        assert im.size == (2 * 336, 336 + 18)  # input + one FastV module


def test_interactive_commands(folder, image_file):  # noqa: F811
    script = "what is it\n/stats\n/strategy pdrop\nand now\n/image nowhere.png\n/bogus\n/quit\n"
    res = run("chat", "--model", folder, "--image", image_file, *ARGS, input=script)
    assert res.exit_code == 0, res.output
    assert res.output.count("atp> ") == 2
    assert '"visual_tokens_avg"' in res.output
    assert "strategy pdrop" in res.output
    assert "image not found" in res.output and "unknown command" in res.output


def test_missing_model_folder(image_file, tmp_path):
    res = run("chat", "--model", tmp_path / "none", "--image", image_file, "hello")
    assert "no model folder" in str(res.exception)


def test_multi_turn_keeps_the_image_and_extends(folder):  # noqa: F811
    cfg = PipelineConfig(context=ContextConfig(n_ctx=512), max_tokens=5)
    with Pipeline.from_dir(folder, "fastv", cfg, k=1, ratio=0.5) as pipe:
        conv = pipe.conversation()
        conv.set_image(images(1, seed=5)[0])
        first = "".join(conv.ask("what is in the picture"))
        cells_after_first = [c.n_tokens for c in pipe.decoder.contexts]
        alive = pipe.decoder.stats.visual_alive_per_layer.copy()
        second = "".join(conv.ask("and the colour"))
        cells_after_second = [c.n_tokens for c in pipe.decoder.contexts]
        assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]
        assert conv.messages[1]["content"] == first and conv.messages[3]["content"] == second
        grown = np.array(cells_after_second) - np.array(cells_after_first)
        assert (grown > 0).all() and len(set(grown.tolist())) == 1  # every segment got the same new text tokens
        assert (pipe.decoder.stats.visual_alive_per_layer == alive).all()  # the image was not prefilled again
        assert cells_after_first[0] - cells_after_first[1] == 32  # half of the 64 visual tokens left segment 1


def test_ctrl_c_at_the_prompt_and_during_an_answer(folder, image_file, monkeypatch, capsys):  # noqa: F811
    """Ctrl-C once at the prompt keeps the session, twice in a row leaves it; Ctrl-C during an answer forgets that
    question, and the next answer is what a fresh session gives."""
    import builtins

    from atp_cli.chat import ChatSession

    cfg = PipelineConfig(context=ContextConfig(n_ctx=512), max_tokens=5)
    with ChatSession.open(folder, "fastv", cfg, image_file, None) as fresh:
        reference = fresh.answer("what is it", echo=False)
    session = ChatSession.open(folder, "fastv", cfg, image_file, None)
    real_answer = session.answer
    calls = {"n": 0}

    def answer_interrupted_once(question, echo=True):
        calls["n"] += 1
        if calls["n"] == 1:  # the first answer is stopped after its first piece
            stream = session.conv.ask(question)
            next(stream)
            stream.close()
            raise KeyboardInterrupt
        return real_answer(question, echo)

    lines = iter([KeyboardInterrupt, "what is it", "what is it", "/stats", KeyboardInterrupt, KeyboardInterrupt])

    def fake_input(prompt=""):
        item = next(lines)
        if item is KeyboardInterrupt:
            raise KeyboardInterrupt
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(session, "answer", answer_interrupted_once)
    with session:
        session.interactive()
        out = capsys.readouterr().out
        assert "[Ctrl-C again, Ctrl-D or /quit to leave]" in out
        assert "[stopped; that question is forgotten]" in out
        assert [m["role"] for m in session.conv.messages] == ["user", "assistant"]
        assert session.conv.messages[1]["content"] == reference


def test_a_conversation_rebuilt_from_its_transcript_equals_one_prefill_of_it(folder):  # noqa: F811
    """load() feeds the transcript turn by turn; without pruning the caches then hold exactly what one prefill of the
    whole rendered conversation holds (the image rows spliced in at the first user turn), so the next answer's
    logits are equal."""
    from atp_cli.prompt import IMAGE_MARKER
    from atp_cli.prompt_input import Prompt, Span

    cfg = PipelineConfig(context=ContextConfig(n_ctx=512), max_tokens=5)
    img = images(1, seed=6)[0]
    q1, a1, q2 = "what is in the picture", "a red square", "and the colour"
    with Pipeline.from_dir(folder, "none", cfg) as pipe:
        conv = pipe.conversation()
        conv.set_image(img, "be brief")
        conv.load([{"role": "user", "content": q1}, {"role": "assistant", "content": a1}])
        turn = pipe.chat.follow_up(conv.messages, q2)
        loaded = pipe.decoder.extend(turn)
        n_loaded = pipe.decoder.next_pos

        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{IMAGE_MARKER}\n{q1}"},
                    {"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
        before, after = pipe.chat.render(messages).split(IMAGE_MARKER)
        whole = Prompt((Span.text(pipe.chat.tokenize(before, add_special=True)), Span.image(pipe.encode(img)),
                        Span.text(pipe.chat.tokenize(after))))
        pipe.decoder.reset()
        once = pipe.decoder.prefill(whole)
        assert pipe.decoder.next_pos == n_loaded
        np.testing.assert_allclose(loaded, once, rtol=1e-4, atol=1e-4)
        # a malformed transcript is refused before anything is fed, and the conversation stays usable
        conv.set_image(img)
        for bad in ([{"role": "user", "content": q1}], [{"role": "assistant", "content": a1}] * 2,
                    [{"role": "user", "content": q1}, {"role": "assistant", "content": None}]):
            with pytest.raises(InputError):
                conv.load(bad)
        assert conv.turns == 0
        answer = "".join(conv.ask(q1))
        assert conv.turns == 1 and answer == pipe(img, q1).text

