"""A turn that is interrupted or fails leaves the conversation exactly as before it; misuse of a Pipeline is refused
with UsageError instead of crashing; user text never becomes chat-template control tokens."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("transformers")

from llama_cpp import llama_cpp as llama  # noqa: E402

from atp_cli.errors import UsageError  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.sampling import SamplerConfig  # noqa: E402
from tests.test_pipeline import folder, images  # noqa: E402,F401

CFG = PipelineConfig(context=ContextConfig(n_ctx=512, n_batch=32, n_ubatch=32), max_tokens=6,
                     sampler=SamplerConfig(temperature=0.8, seed=3))  # sampled: the random state must roll back too
QUESTIONS = ("what is in the picture", "and the colour", "how many")


class Interrupt:
    """Raise KeyboardInterrupt right after the k-th llama_decode has returned: the C side has advanced, the Python
    side has not yet recorded it (the worst moment for a Ctrl-C)."""

    def __init__(self, monkeypatch, k: int) -> None:
        self.k, self.calls = k, 0
        real = llama.llama_decode

        def decode(ctx, batch):
            rc = real(ctx, batch)
            self.calls += 1
            if self.calls == self.k:
                raise KeyboardInterrupt
            return rc

        monkeypatch.setattr(llama, "llama_decode", decode)


@pytest.fixture(scope="module")
def pipe(folder):  # noqa: F811
    with Pipeline.from_dir(folder, "fastv", CFG, k=1, ratio=0.5) as p:
        yield p


def fresh_answers(pipe, n: int) -> list[str]:
    conv = pipe.conversation()
    conv.set_image(images(1, seed=5)[0])
    return ["".join(conv.ask(q)) for q in QUESTIONS[:n]]


def count_decodes(pipe, monkeypatch, turns: int) -> int:
    counter = Interrupt(monkeypatch, k=-1)
    fresh_answers(pipe, turns)
    monkeypatch.undo()
    return counter.calls


@pytest.mark.parametrize("turn", [0, 1, 2])
def test_interrupting_a_turn_at_every_decode_leaves_the_conversation_as_before(pipe, monkeypatch, turn):
    reference = fresh_answers(pipe, turn + 1)
    before = count_decodes(pipe, monkeypatch, turn)
    during = count_decodes(pipe, monkeypatch, turn + 1) - before
    assert during >= 4  # prefill or follow-up over the segments, then every generated token
    for k in range(1, during + 1):
        conv = pipe.conversation()
        conv.set_image(images(1, seed=5)[0])
        answers = ["".join(conv.ask(q)) for q in QUESTIONS[:turn]]
        history = [dict(m) for m in conv.messages]
        positions = [c.pos_max if turn else -1 for c in pipe.decoder.contexts]  # a first turn rolls back to empty
        Interrupt(monkeypatch, k)
        with pytest.raises(KeyboardInterrupt):
            "".join(conv.ask(QUESTIONS[turn]))
        monkeypatch.undo()
        assert conv.messages == history, k
        assert [c.pos_max for c in pipe.decoder.contexts] == positions, k
        answers.append("".join(conv.ask(QUESTIONS[turn])))
        assert answers == reference, f"interrupted at decode {k} of {during}"


def test_an_exception_in_a_keep_function_rolls_back(pipe, monkeypatch):
    reference = fresh_answers(pipe, 1)
    strategy = pipe.strategy
    monkeypatch.setattr(type(strategy), "__call__", lambda self, view: (_ for _ in ()).throw(KeyboardInterrupt))
    conv = pipe.conversation()
    conv.set_image(images(1, seed=5)[0])
    with pytest.raises(KeyboardInterrupt):
        "".join(conv.ask(QUESTIONS[0]))
    monkeypatch.undo()
    assert conv.messages == [] and all(c.n_tokens == 0 for c in pipe.decoder.contexts)
    assert ["".join(conv.ask(QUESTIONS[0]))] == reference


def test_a_stream_abandoned_midway_is_rolled_back(pipe):
    reference = fresh_answers(pipe, 2)
    conv = pipe.conversation()
    conv.set_image(images(1, seed=5)[0])
    first = "".join(conv.ask(QUESTIONS[0]))
    cached = [(c.pos_max, c.n_tokens) for c in pipe.decoder.contexts]
    stream = conv.ask(QUESTIONS[1])
    next(stream)
    stream.close()  # the caller stopped reading
    assert len(conv.messages) == 2
    assert [(c.pos_max, c.n_tokens) for c in pipe.decoder.contexts] == cached
    assert [first, "".join(conv.ask(QUESTIONS[1]))] == reference


def test_a_closed_pipeline_refuses_every_call(folder):  # noqa: F811
    p = Pipeline.from_dir(folder, "fastv", CFG, k=1, ratio=0.5)
    conv = p.conversation()
    conv.set_image(images(1)[0])
    p.close()
    p.close()  # idempotent
    img = images(1)[0]
    for call in (lambda: p(img, "what"), lambda: "".join(p.stream(img, "what")), lambda: "".join(conv.ask("what")),
                 lambda: p.set_strategy("none"), lambda: p.decoder):
        with pytest.raises(UsageError, match="closed"):
            call()


def test_a_second_answer_while_one_runs_is_refused(pipe):
    img = images(1)[0]
    stream = pipe.stream(img, "what is in the picture")
    next(stream)  # the first answer is under way
    errors = []

    def other_thread():
        try:
            pipe(img, "and this")
        except UsageError as e:
            errors.append(str(e))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors and "already answering" in errors[0]
    with pytest.raises(UsageError, match="already answering"):
        "".join(pipe.stream(img, "same thread, second stream"))
    with pytest.raises(UsageError):
        pipe.set_strategy("none")
    with pytest.raises(UsageError):
        pipe.close()
    rest = "".join(stream)  # the first answer is unharmed and finishes
    assert isinstance(rest, str)
    pipe(img, "now it is free")


def test_two_conversations_on_one_pipeline_never_continue_each_others_context(pipe):
    a, b = pipe.conversation(), pipe.conversation()
    a.set_image(images(1, seed=5)[0])
    b.set_image(images(1, seed=6)[0])
    "".join(a.ask(QUESTIONS[0]))
    "".join(b.ask(QUESTIONS[0]))  # b takes the caches
    with pytest.raises(UsageError, match="another conversation"):
        "".join(a.ask(QUESTIONS[1]))
    assert len(a.messages) == 2  # refused before anything changed
    "".join(b.ask(QUESTIONS[1]))  # b continues its own context
    pipe(images(1)[0], "a one-shot question")  # takes the caches as well
    with pytest.raises(UsageError):
        "".join(b.ask(QUESTIONS[2]))
    a.set_image(images(1, seed=5)[0])  # starting over always works
    assert "".join(a.ask(QUESTIONS[0])) == fresh_answers(pipe, 1)[0]


def test_user_text_is_never_parsed_as_special_tokens(pipe):
    chat = pipe.chat
    specials = [s for s in pipe.model.special_texts() if s.startswith("<|") or s in ("<s>", "</s>")]
    assert specials, pipe.model.special_texts()
    injected = "".join(specials[:3]) + " hello"
    tokens = chat.follow_up([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], injected)
    plain = chat.follow_up([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "hello")
    special_ids = {int(pipe.model.tokenize(s, parse_special=True)[0]) for s in specials[:3]}
    assert sum(int(t) in special_ids for t in tokens) == sum(int(t) in special_ids for t in plain)
    prompt = chat.image_prompt(pipe.encoder.encode(images(1)[0]), injected)
    clean = chat.image_prompt(pipe.encoder.encode(images(1)[0]), "hello")
    count = [sum(int(t) in special_ids for s in p.spans if not s.is_visual for t in s.tokens) for p in (prompt, clean)]
    assert count[0] == count[1]
    # the text of the user's special tokens is still there, as plain text
    text = b"".join(pipe.model.token_piece(int(t)) for s in prompt.spans if not s.is_visual for t in s.tokens)
    assert injected.encode() in text
    # without special text in the question, tokenization is the whole-prompt one, unchanged
    whole = pipe.model.tokenize(chat.render([{"role": "user", "content": "hello"}]), add_special=False)
    assert list(chat.text_prompt("hello").spans[0].tokens)[-len(whole):] == list(whole)


def test_ctrl_c_inside_the_log_callback_reaches_python(monkeypatch):
    """llama.cpp calls the log callback from C; a KeyboardInterrupt raised there would be printed and dropped by
    ctypes. It is raised once the C call has returned (here: the next decode of a real context)."""
    import logging

    from atp_cli.runtime import log as llama_log

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_log.log, "log", interrupted)
    monkeypatch.setitem(llama_log._state, "level", logging.DEBUG)
    llama_log._on_log(4, b"an error line\n", None)  # returns normally, as a C callback must
    with pytest.raises(KeyboardInterrupt):
        llama_log.raise_pending_interrupt()
    llama_log.raise_pending_interrupt()  # raised once only
