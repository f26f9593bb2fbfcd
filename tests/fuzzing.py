"""The fuzzing harness: seeded hypothesis searches over what atp reads from users' files and command lines.

Targets and the property each must hold (no crash, no traceback, no silent acceptance):
- the ATP reader (`read_atp`) on mutated atp.* keys and tensors: weights that pass are valid by the schema and
  give finite thresholds, anything else is an AtpError;
- the mmproj check on mutated clip keys and tensors: a file it passes is loaded by libmtmd and encodes an image
  (in a child process, so that an assert would show as a failure instead of killing the run), anything else is
  a ModelError;
- the checkpoint reader (`open_checkpoint` + `check_tensors`) on mutated config.json / preprocessor_config.json:
  a pass or an AtpError;
- the CLI on random option values: exit 0 or 2, and on 2 exactly one `error: ...` line on stderr.

`tests/test_fuzz.py` runs each briefly with a fixed seed in the test suite; `scripts/fuzz.py` runs them long.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import assume, strategies as st

from atp_cli.errors import AtpError
from atp_cli.gguf_keys import Atp
from tests.gguf_edit import DROP, rewrite_gguf

ROOT = Path(__file__).resolve().parents[1]

# a value of any type a key could be given by a broken or hostile file
VALUES = st.one_of(
    st.just(DROP), st.booleans(), st.integers(-(2**31), 2**32 - 1),
    st.floats(width=32, allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-1000, 10**6), min_size=1, max_size=5),
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=4),
)
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6), st.lists(st.integers(-5, 5000), max_size=4), st.dictionaries(st.text(max_size=4),
                                                                                        st.integers(), max_size=2),
)


def arrays(max_side: int = 80) -> st.SearchStrategy[np.ndarray]:
    """Small arrays of any float/int type and shape, holding ordinary, huge and non-finite values."""
    shapes = st.lists(st.integers(1, max_side), min_size=1, max_size=4)
    dtypes = st.sampled_from([np.float32, np.float16, np.int32])
    fills = st.sampled_from([0.0, 1.0, -3.0, 1e30, math.nan, math.inf])
    return st.builds(lambda shape, dtype, fill, noise: _array(shape, dtype, fill, noise), shapes, dtypes, fills,
                     st.booleans())


def _array(shape: list[int], dtype, fill: float, noise: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        a = np.full(shape, fill, dtype=np.float64)
        if noise:
            a = a + np.random.default_rng(len(shape)).standard_normal(shape)
        if np.dtype(dtype).kind == "i":
            a = np.nan_to_num(a, nan=0, posinf=2**30, neginf=-(2**30)).clip(-(2**30), 2**30)
        return a.astype(dtype)


def write_mutant(src: Path, dst: Path, keys: dict, tensors: dict) -> Path:
    """The mutant file, or `assume(False)` when gguf-py itself cannot write such a value (not a case to test)."""
    try:
        return rewrite_gguf(src, dst, keys, tensors)
    except (ValueError, TypeError, OverflowError, KeyError):
        assume(False)
        raise AssertionError  # unreachable


# -- the ATP reader --------------------------------------------------------------------------------------------

ATP_KEYS = [Atp.FORMAT_VERSION, Atp.N_LAYER, Atp.BOUNDARIES, Atp.SAP_STRIDES, Atp.SAP_LAMBDA, Atp.TEMPERATURE,
            Atp.GRID, Atp.MLP_HIDDEN, Atp.MLP_FEATURES, Atp.HAS_MLP, Atp.FREE_MASS, Atp.FREE_STRIDE]
ATP_TENSORS = [f"atp.m{m}.{p}" for m in range(3) for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]


def atp_mutation() -> st.SearchStrategy[tuple[dict, dict]]:
    keys = st.dictionaries(st.sampled_from(ATP_KEYS), VALUES, min_size=0, max_size=3)
    tensors = st.dictionaries(st.sampled_from(ATP_TENSORS), st.one_of(st.just(DROP), arrays(12)), max_size=2)
    return st.tuples(keys, tensors).filter(lambda kt: kt[0] or kt[1])


def check_atp_reader(good: Path, keys: dict, tensors: dict) -> str:
    """Read a mutant of `good`; returns 'refused' or 'accepted', or fails the property."""
    from atp_cli.pruning.atp import ThresholdMLP
    from atp_cli.pruning.store import read_atp

    with tempfile.TemporaryDirectory() as tmp:
        path = write_mutant(good, Path(tmp) / "m.gguf", keys, tensors)
        try:
            weights = read_atp(path)
        except AtpError:
            return "refused"
    if weights is None:
        return "accepted"
    weights.validate()
    features = np.linspace(0.0, 10.0, 10)
    for mlp in weights.mlps:
        assert isinstance(mlp, ThresholdMLP)
        theta = mlp.thresholds(features)
        assert all(math.isfinite(t) for t in theta), theta
    assert all(0 < p <= 1 for p in weights.free_mass)
    return "accepted"


# -- the mmproj check ------------------------------------------------------------------------------------------

CLIP_KEYS = ["clip.vision.image_size", "clip.vision.patch_size", "clip.vision.embedding_length",
             "clip.vision.feed_forward_length", "clip.vision.attention.head_count", "clip.vision.block_count",
             "clip.vision.attention.layer_norm_epsilon", "clip.vision.image_mean", "clip.vision.image_std",
             "clip.vision.feature_layer", "clip.vision.projection_dim", "clip.projector_type", "clip.use_gelu",
             "clip.has_vision_encoder", "general.name"]
CLIP_TENSORS = ["v.patch_embd.weight", "v.position_embd.weight", "v.class_embd", "v.blk.0.attn_q.weight",
                "v.blk.0.attn_k.weight", "v.blk.1.ffn_up.weight", "v.blk.1.ffn_down.weight", "v.blk.0.ln1.weight",
                "mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"]


def mmproj_mutation() -> st.SearchStrategy[tuple[dict, dict]]:
    keys = st.dictionaries(st.sampled_from(CLIP_KEYS), VALUES, max_size=3)
    tensors = st.dictionaries(st.sampled_from(CLIP_TENSORS), st.one_of(st.just(DROP), arrays(70)), max_size=2)
    return st.tuples(keys, tensors).filter(lambda kt: kt[0] or kt[1])


def check_mmproj_mutant(good: Path, keys: dict, tensors: dict, keep_dir: Path, n_embd: int) -> str:
    """'refused', or 'passed' (the mutant is kept in `keep_dir` for `load_in_child`)."""
    from atp_cli.runtime.mmproj_check import check_mmproj

    path = keep_dir / f"m{len(list(keep_dir.glob('*.gguf')))}.gguf"
    write_mutant(good, path, keys, tensors)
    try:
        check_mmproj(path, n_embd)
    except AtpError:
        path.unlink()
        return "refused"
    path.with_suffix(".txt").write_text(describe(keys, tensors))
    return "passed"


def describe(keys: dict, tensors: dict) -> str:
    """A mutation in words, for a failure report."""
    parts = [f"{k} = {'(dropped)' if v is DROP else repr(v)}" for k, v in keys.items()]
    parts += [f"tensor {k} = {'(dropped)' if v is DROP else f'{v.dtype}{list(v.shape)}'}" for k, v in tensors.items()]
    return "; ".join(parts)


_LOADER = """
import sys
from atp_cli.runtime.log import quiet_llama_logs
from atp_cli.runtime.model import LlamaModel
from atp_cli.runtime.vision import ImageEncoder
from atp_cli.errors import AtpError
from PIL import Image
quiet_llama_logs(50)
model = LlamaModel(sys.argv[1])
for path in sys.argv[2:]:
    print("start", path, flush=True)
    try:
        with ImageEncoder(path, model) as enc:
            rows = enc.encode(Image.new("RGB", (40, 30), (200, 30, 30)))
            assert rows.shape[0] == enc.n_tokens(), rows.shape
    except AtpError as e:
        print("error", path, e, flush=True)
        continue
    print("ok", path, flush=True)
"""


def load_in_child(model: Path, mmprojs: list[Path]) -> dict[str, str]:
    """Open each mmproj with libmtmd in one child process; path -> 'ok', 'error' (an AtpError) or 'crash'."""
    if not mmprojs:
        return {}
    done = subprocess.run([sys.executable, "-c", _LOADER, str(model), *map(str, mmprojs)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    result: dict[str, str] = {}
    for line in done.stdout.splitlines():
        word, path = line.split()[:2]
        result[path] = word if word != "start" else "crash"
    if done.returncode != 0:
        started = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("start")]
        result[started[-1] if started else str(mmprojs[0])] = "crash"
    return result


# -- the checkpoint reader -------------------------------------------------------------------------------------

CONFIG_PATHS = [("vision_config", "hidden_size"), ("vision_config", "patch_size"), ("vision_config", "image_size"),
                ("vision_config", "num_hidden_layers"), ("vision_config", "num_attention_heads"),
                ("vision_config", "model_type"), ("text_config", "hidden_size"),
                ("text_config", "num_hidden_layers"), ("text_config", "num_attention_heads"),
                ("text_config", "intermediate_size"), ("text_config", "vocab_size"), (None, "vision_feature_layer"),
                (None, "projector_hidden_act"), (None, "vision_feature_select_strategy"), (None, "vision_config")]
PRE_KEYS = ["crop_size", "image_mean", "image_std"]


def checkpoint_mutation():
    return st.tuples(st.dictionaries(st.sampled_from(CONFIG_PATHS), JSON_VALUES, max_size=3),
                     st.dictionaries(st.sampled_from(PRE_KEYS), JSON_VALUES, max_size=2),
                     st.sampled_from(["json", "list", "bytes"]))


def check_checkpoint(good: Path, config_edits: dict, pre_edits: dict, form: str) -> str:
    from converters.checkpoint import check_tensors, open_checkpoint
    from converters.mmproj import n_blocks_run
    from converters.vision_towers import layout

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        folder.mkdir()
        for f in good.iterdir():  # weights are linked, not copied
            (folder / f.name).symlink_to(f)
        config = json.loads((good / "config.json").read_text())
        for (section, key), value in config_edits.items():
            target = config.setdefault(section, {}) if section else config
            if isinstance(target, dict):
                target[key] = value
        pre = json.loads((good / "preprocessor_config.json").read_text())
        pre.update(pre_edits)
        (folder / "config.json").unlink()
        (folder / "preprocessor_config.json").unlink()
        text = {"json": json.dumps(config), "list": json.dumps([config]), "bytes": None}[form]
        if text is None:
            (folder / "config.json").write_bytes(b"\xff\xfe" + json.dumps(config).encode("utf-16-le"))
        else:
            (folder / "config.json").write_text(text)
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
        try:
            ckpt = open_checkpoint(folder)
            lay = layout(ckpt.vision)
            check_tensors(ckpt, lay.block, lay.block_map, n_blocks_run(ckpt))
        except AtpError:
            return "refused"
    return "accepted"


# -- the CLI ---------------------------------------------------------------------------------------------------

CLI_OPTIONS = {
    "chat": ["--max-tokens", "--temperature", "--top-p", "--seed", "--n-ctx", "--threads", "--strategy",
             "--show-keep", "--image"],
    "convert": ["--outtype", "--mmproj-type", "--image-size", "--atp"],
    "calibrate": ["--budget", "--strides", "--limit", "--threads"],
}
OPTION_TEXT = st.one_of(st.integers(-(2**65), 2**65).map(str), st.floats(allow_nan=True).map(str),
                        st.sampled_from(["", "-1", "0", "1e309", "nan", "abc", "/", "atp", "q4_k_m", "f16",
                                         "4,6,8", "1,,2", "\udcff"]), st.text(max_size=5))


def cli_case():
    return st.sampled_from(sorted(CLI_OPTIONS)).flatmap(
        lambda cmd: st.tuples(st.just(cmd), st.dictionaries(st.sampled_from(CLI_OPTIONS[cmd]), OPTION_TEXT,
                                                            max_size=4)))


def run_cli(command: str, options: dict[str, str], workdir: Path) -> tuple[int, str]:
    """`atp COMMAND` on a model folder that does not exist, in process; (exit code, stderr)."""
    from atp_cli.cli import main

    missing = str(workdir / "no-model")
    argv = {"chat": [command, "--model", missing, "--image", str(workdir / "no.png"), "hello"],
            "convert": [command, missing, str(workdir / "out")],
            "calibrate": [command, missing, str(workdir / "no.jsonl")]}[command]
    for option, value in options.items():
        argv += [option, value]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


def check_cli(command: str, options: dict[str, str], workdir: Path) -> str:
    code, err = run_cli(command, options, workdir)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return "refused" if code else "accepted"


def tiny_checkpoint(folder: Path) -> Path:
    from tests.tiny_llava import build_tiny_llava

    return build_tiny_llava(folder, "clip", grid=4, patch=4, text_layers=2, seed=3)

