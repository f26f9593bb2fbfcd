"""`atp serve` on loopback, driven by the real `openai` client: answers equal the Pipeline's own, streaming,
multi-turn continuation of the caches, pruning per request, errors as OpenAI error objects, 429 and cancellation."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
import zlib
import struct

import numpy as np
import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from atp_cli.model_files import find_pair  # noqa: E402
from atp_cli.pipeline import Pipeline, PipelineConfig  # noqa: E402
from atp_cli.runtime.context import ContextConfig  # noqa: E402
from atp_cli.server import close_served, open_served  # noqa: E402
from atp_cli.server.app import create_app  # noqa: E402
from atp_cli.server.images import ImagePolicy  # noqa: E402
from atp_cli.server.jobs import Pruning, ServeDefaults  # noqa: E402
from tests.test_pipeline import folder  # noqa: E402,F401 (the tiny converted LLaVA, 8 x 8 visual tokens)

GRID = 8
CONFIG = PipelineConfig(context=ContextConfig(n_ctx=512, n_batch=128, n_ubatch=128, n_threads=1))
MODEL = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_folder, workers: int = 1, queue: int = 4, **defaults):
    """A server on a free loopback port, in a thread; yields its base URL."""
    defaults.setdefault("max_tokens", 16)
    served = open_served(find_pair(model_folder), MODEL, workers, ServeDefaults(**defaults), CONFIG, queue)
    served.max_body_bytes = 200_000
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        close_served(served)


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):  # noqa: F811
    allowed = tmp_path_factory.mktemp("allowed")
    picture(1).save(allowed / "one.png")
    with serving(folder, images=ImagePolicy(max_bytes=60_000, allowed_dir=allowed)) as url:
        yield url


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8))


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def user(text: str, image: Image.Image | None = None, detail: str = "auto") -> dict:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": data_uri(image), "detail": detail}})
    return {"role": "user", "content": parts}


def direct_answers(folder, image, questions, strategy="atp", max_tokens=16, **params) -> list[str]:
    """The same conversation through the Pipeline's own API (the reference the server must equal)."""
    cfg = PipelineConfig(context=CONFIG.context, max_tokens=max_tokens)
    with Pipeline.from_dir(folder, strategy, cfg, **params) as pipe:
        conv = pipe.conversation()
        conv.set_image(image)
        return ["".join(conv.ask(q)) for q in questions]


def test_one_shot_equals_the_pipeline_and_reports_what_atp_did(server, folder):  # noqa: F811
    img = picture(3)
    out = client(server).chat.completions.create(model=MODEL, messages=[user("what is in the picture", img)])
    assert out.choices[0].message.content == direct_answers(folder, img, ["what is in the picture"])[0]
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > GRID * GRID and out.usage.completion_tokens >= 1
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    report = out.model_dump()["atp"]
    assert report["visual_tokens_in"] == GRID * GRID and 0 < report["visual_tokens_avg"] < GRID * GRID
    assert report["strategy"] == "atp-free"  # the server's default, atp, without trained weights in this model
    assert report["kv_bytes"] > 0 and report["prefill_reused"] is False
    assert [m.id for m in client(server).models.list().data] == [MODEL]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_streaming_sends_the_same_answer_in_chunks(server):
    img = picture(4)
    messages = [user("describe the colour", img)]
    whole = client(server).chat.completions.create(model=MODEL, messages=messages)
    chunks = list(client(server).chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_multi_turn_continues_the_caches_and_matches_the_conversation_api(server, folder):  # noqa: F811
    img = picture(5)
    q1, q2, q3 = "what is in the picture", "and the colour", "how many shapes"
    reference = direct_answers(folder, img, [q1, q2, q3])
    c = client(server)
    first = c.chat.completions.create(model=MODEL, messages=[user(q1, img)])
    a1 = first.choices[0].message.content
    history = [user(q1, img), {"role": "assistant", "content": a1}]
    second = c.chat.completions.create(model=MODEL, messages=[*history, user(q2)])
    report = second.model_dump()["atp"]
    assert report["prefill_reused"] is True and report["encode_seconds"] == 0.0
    assert [a1, second.choices[0].message.content] == reference[:2]
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    # a history the caches do not hold (another client's, or edited): rebuilt from the transcript, then answered
    edited = [user(q1, img), {"role": "assistant", "content": a1 + " indeed"}, user(q2)]
    rebuilt = c.chat.completions.create(model=MODEL, messages=edited)
    assert rebuilt.model_dump()["atp"]["prefill_reused"] is False
    cfg = PipelineConfig(context=CONFIG.context, max_tokens=16)
    with Pipeline.from_dir(folder, "atp", cfg) as pipe:
        conv = pipe.conversation()
        conv.set_image(img)
        conv.load([{"role": "user", "content": q1}, {"role": "assistant", "content": a1 + " indeed"}])
        assert rebuilt.choices[0].message.content == "".join(conv.ask(q2))


def test_pruning_per_request_and_image_detail(server):
    c = client(server)
    img = picture(6)
    fastv = c.chat.completions.create(model=MODEL, messages=[user("what is it", img)],
                                      extra_body={"atp": {"strategy": "fastv", "budget": 24}})
    report = fastv.model_dump()["atp"]
    assert report["strategy"] == "fastv" and abs(report["visual_tokens_avg"] - 24) <= 1
    high = c.chat.completions.create(model=MODEL, messages=[user("what is it", img, detail="high")])
    assert high.model_dump()["atp"]["visual_tokens_avg"] == GRID * GRID
    low = c.chat.completions.create(model=MODEL, messages=[user("what is it", img, detail="low")])
    low_report = low.model_dump()["atp"]  # no ATP operating points in this model: CDPruner keeps 64 (all 64 here)
    assert low_report["strategy"] == "cdpruner" and low_report["visual_tokens_in"] <= 64
    stopped = c.chat.completions.create(model=MODEL, messages=[user("what is it", img)], max_tokens=12)
    text = stopped.choices[0].message.content
    if len(text) > 2:  # a stop sequence cuts the answer where it first occurs
        cut = c.chat.completions.create(model=MODEL, messages=[user("what is it", img)], max_tokens=12,
                                        stop=[text[1:3]])
        assert cut.choices[0].message.content == text[:text.index(text[1:3])]
        assert cut.choices[0].finish_reason == "stop"


def _bomb_png(side: int = 10_000) -> bytes:
    """A PNG of side x side black pixels that compresses to a few kilobytes."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side // 8) for _ in range(side)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case, status, words", [
    ("malformed json", 400, "json"),
    ("unknown model", 404, "not served"),
    ("missing model", 400, "model"),
    ("not an image", 400, "cannot read"),
    ("decompression bomb", 400, "larger than"),
    ("over the size", 413, "larger than"),
    ("remote url", 400, "offline"),
    ("file outside the folder", 400, "only from under"),
    ("two images", 400, "one image"),
    ("image in a later message", 400, "first user message"),
    ("audio part", 400, "input_audio"),
    ("temperature out of range", 400, "temperature"),
    ("max tokens over the limit", 400, "limit"),
    ("prompt over the context", 400, "does not fit"),
    ("unknown strategy", 400, "unknown strategy"),
    ("budget above the visual tokens", 400, "outside"),
    ("last message not the user's", 400, "last message"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, case, status, words):
    img = picture(7)
    ok = user("what is it", img)
    bodies = {
        "unknown model": {"model": "gpt-4o", "messages": [ok]},
        "missing model": {"messages": [ok]},
        "not an image": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"no").decode()}},
            {"type": "text", "text": "hi"}]}]},
        "decompression bomb": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(_bomb_png()).decode()}},
            {"type": "text", "text": "hi"}]}]},
        "over the size": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}},
            {"type": "text", "text": "hi"}]}]},
        "remote url": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, {"type": "text", "text": "hi"}]}]},
        "file outside the folder": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, {"type": "text", "text": "hi"}]}]},
        "two images": {"model": MODEL, "messages": [{"role": "user", "content": [
            *user("a", img)["content"][:1], *user("b", img)["content"]]}]},
        "image in a later message": {"model": MODEL, "messages": [
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}, user("what is it", img)]},
        "audio part": {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
        "temperature out of range": {"model": MODEL, "messages": [ok], "temperature": 5},
        "max tokens over the limit": {"model": MODEL, "messages": [ok], "max_tokens": 10_000},
        "prompt over the context": {"model": MODEL, "messages": [user("red " * 600, img)]},
        "unknown strategy": {"model": MODEL, "messages": [ok], "atp": {"strategy": "magic"}},
        "budget above the visual tokens": {"model": MODEL, "messages": [ok],
                                           "atp": {"strategy": "fastv", "budget": 1000}},
        "last message not the user's": {"model": MODEL, "messages": [ok, {"role": "assistant", "content": "x"}]},
    }
    url = f"{server}/v1/chat/completions"
    if case == "malformed json":
        res = httpx.post(url, content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"})
    else:
        res = httpx.post(url, json=bodies[case], timeout=60)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert words in error["message"].lower() and error["type"]
    served = client(server).chat.completions.create(model=MODEL, messages=[user("what is it", img)])
    assert served.choices[0].message.content is not None


def test_a_local_file_under_the_allowed_folder(server):
    res = httpx.post(f"{server}/v1/chat/completions", timeout=60, json={"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "one.png"}},
                                     {"type": "text", "text": "what is it"}]}]})
    assert res.status_code == 200, res.text
    assert res.json()["atp"]["visual_tokens_in"] == GRID * GRID


def test_a_full_queue_answers_429_and_a_client_that_leaves_stops_generation(folder):  # noqa: F811
    img = picture(18)
    messages = [user("how many shapes", img)]
    with serving(folder, workers=1, queue=0, max_tokens=300) as url:
        c = client(url)
        long = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=300)
        assert long.choices[0].finish_reason == "length"  # this question runs to max_tokens on this model
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": messages, "max_tokens": 300, "stream": True}) as res:
            lines = res.iter_lines()
            assert next(lines).startswith("data:")  # generating now: the only worker is busy, no queue
            with pytest.raises(openai.RateLimitError) as busy:
                c.chat.completions.create(model=MODEL, messages=messages)
            assert int(busy.value.response.headers["retry-after"]) >= 1
        deadline = time.time() + 30  # the stream was closed after its first chunk
        while (health := httpx.get(f"{url}/health").json())["busy"] or not health["cancelled"]:
            assert time.time() < deadline, health
            time.sleep(0.05)
        assert health == {**health, "cancelled": 1, "admitted": 0}
        again = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=300)
        assert again.choices[0].message.content == long.choices[0].message.content  # the rollback lost nothing


def test_text_only_chats_with_a_system_message(server, folder):  # noqa: F811
    """No image at all (clients ask for titles and follow-ups this way): the system message and turns go through the
    model's chat template as in the Conversation API, and a continuation extends the caches."""
    system, q1, q2 = "answer in one word", "what is red", "and blue"
    cfg = PipelineConfig(context=CONFIG.context, max_tokens=16)
    with Pipeline.from_dir(folder, "atp", cfg) as pipe:
        conv = pipe.conversation()
        conv.set_image(None, system)
        reference = ["".join(conv.ask(q)) for q in (q1, q2)]
    c = client(server)
    sys_msg = {"role": "system", "content": system}
    first = c.chat.completions.create(model=MODEL, messages=[sys_msg, {"role": "user", "content": q1}])
    a1 = first.choices[0].message.content
    second = c.chat.completions.create(model=MODEL, messages=[
        sys_msg, {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
        {"role": "user", "content": q2}])
    assert [a1, second.choices[0].message.content] == reference
    report = second.model_dump()["atp"]
    assert report["prefill_reused"] is True and report["visual_tokens_in"] == 0


def test_the_serve_command(folder, tmp_path):  # noqa: F811
    """`atp serve` as a user starts it: serves until stopped; bad options are refused before loading anything."""
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-m", "atp_cli.cli", "serve", "--model", str(folder), "--port", str(port),
           "--n-ctx", "512", "--threads", "1", "--model-id", MODEL]
    bad = subprocess.run([*cmd[:3], "serve", "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--workers" in bad.stderr
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "atp serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        out = client(f"http://127.0.0.1:{port}").chat.completions.create(
            model=MODEL, messages=[user("what is it", picture(9))], max_tokens=4)
        assert out.usage.completion_tokens <= 4 and out.model_dump()["atp"]["strategy"] == "atp-free"
    finally:
        proc.terminate()
        assert proc.wait(60) is not None


def test_two_workers_answer_at_once_and_follow_ups_find_their_conversation(folder):  # noqa: F811
    with serving(folder, workers=2, queue=0, max_tokens=300) as url:
        c = client(url)
        chats = {seed: [user("what is in the picture", picture(seed))] for seed in (11, 12)}
        for messages in chats.values():  # each conversation's first turn lands on a free worker
            out = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
            messages.append({"role": "assistant", "content": out.choices[0].message.content})
        for messages in chats.values():  # each follow-up goes to the worker whose caches hold its conversation
            out = c.chat.completions.create(model=MODEL, messages=[*messages, user("and the colour")], max_tokens=8)
            assert out.model_dump()["atp"]["prefill_reused"] is True
        body = {"model": MODEL, "messages": [user("how many shapes", picture(18))], "max_tokens": 300, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as one, \
                httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as two:
            # with no queue, a second request while the first is held would be refused unless a second worker took it
            assert one.status_code == two.status_code == 200
            texts = [_streamed_text(r) for r in (one, two)]
            assert texts[0] == texts[1] and texts[0]


def _streamed_text(response) -> str:
    """The answer an SSE response streams (its chunks' content deltas), checked to end with [DONE]."""
    import json

    data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1]
                   if json.loads(d)["choices"])
