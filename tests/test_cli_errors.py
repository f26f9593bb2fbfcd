"""Every user error from the CLI is one `error: ...` line on stderr and exit code 2, checked before any model work;
a traceback only with --verbose."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from atp_cli.cli import main


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def one_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("option,value,fragment", [
    ("--seed", "-1", "'--seed': -1 is not in the range"),
    ("--threads", "-1", "'--threads': -1 is not in the range 0<=x<=256"),
    ("--threads", "1000", "'--threads': 1000 is not in the range"),
    ("--max-tokens", "-1", "'--max-tokens': -1"),
    ("--top-p", "0", "'--top-p'"),
    ("--temperature", "nan", "'--temperature'"),
    ("--n-ctx", "10", "'--n-ctx': 10"),
])
def test_out_of_range_chat_options(tmp_path, option, value, fragment):
    one_line(*run("chat", "--model", tmp_path, "--image", tmp_path / "x.png", option, value, "hi"), fragment,
             "atp chat --help")


def test_show_keep_into_a_missing_folder_or_onto_a_folder_is_refused_first(tmp_path):
    image = tmp_path / "x.png"
    one_line(*run("chat", "--model", tmp_path / "none", "--image", image, "--show-keep", tmp_path / "no" / "k.png",
                  "hi"), "folder of", "does not exist")
    one_line(*run("chat", "--model", tmp_path / "none", "--image", image, "--show-keep", tmp_path, "hi"),
             "is a folder")
    assert not list(tmp_path.rglob("*.part"))


def test_missing_model_folder_and_unknown_command(tmp_path):
    one_line(*run("chat", "--model", tmp_path / "none", "--image", tmp_path / "x.png", "hi"), "no model folder")
    one_line(*run("bogus"), "No such command 'bogus'")


def test_convert_refuses_broken_configurations_in_one_line(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps([{"model_type": "llava"}]))
    one_line(*run("convert", ckpt, tmp_path / "out"), "holds a JSON list; expected an object")
    (ckpt / "config.json").write_bytes(b"\xff\xfe{\x00}\x00")
    one_line(*run("convert", ckpt, tmp_path / "out"), "cannot parse")
    one_line(*run("convert", ckpt, tmp_path / "out", "--image-size", "-3"), "'--image-size': -3")
    (tmp_path / "file").write_text("x")
    one_line(*run("convert", "--attach", tmp_path / "file" / "sub", "--atp", tmp_path / "none.safetensors"),
             "cannot read ATP weights")
    assert not (tmp_path / "out").exists()


def test_verbose_adds_the_traceback(tmp_path):
    code, err = run("-v", "chat", "--model", tmp_path / "none", "--image", tmp_path / "x.png", "hi")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: no model folder")


def test_a_question_that_is_not_utf8_is_refused():
    from atp_cli.errors import InputError
    from atp_cli.prompt import check_question

    with pytest.raises(InputError, match="not valid UTF-8"):
        check_question("what is \udcff this")
    with pytest.raises(InputError, match="empty"):
        check_question("  ")
    assert check_question("naïve question") == "naïve question"
