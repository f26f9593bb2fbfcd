"""`atp convert`: a llava-hf checkpoint -> one folder with the language model, the mmproj and ATP weights.

Everything is checked before the long work starts; files are written in a temporary sibling folder that is
renamed into place only when complete, so an interrupted or failed run leaves the output path untouched, and
the input folder is only ever read.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from tqdm import tqdm

from atp_cli.errors import InputError, ModelError
from atp_cli.model_files import MMPROJ_FILE, MODEL_FILE, find_pair
from atp_cli.pruning.store import AtpWeights, add_to_writer, attach_atp
from atp_cli.runtime.mmproj_check import check_mmproj
from atp_cli.units import human_bytes
from converters.checkpoint import LlavaCheckpoint, check_tensors, open_checkpoint
from converters.llm import convert_text_model
from converters.mmproj import n_blocks_run, write_mmproj
from converters.vision_towers import layout
from converters.quantize import FTYPES



@dataclass(frozen=True)
class ConvertOptions:
    outtype: str = "q4_k_m"
    mmproj_type: str = "f16"  # f16, f32 or q8_0 (converters.mmproj.MMPROJ_TYPES)
    image_size: int | None = None  # default: the checkpoint's
    keep_cls: bool = True
    force: bool = False
    atp: AtpWeights | None = None
    llm_gguf: Path | None = None  # use this GGUF language model as it is instead of converting the checkpoint's


@dataclass
class ConvertSummary:
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    types: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rows = [f"{name:32s} {size / 2**20:9.1f} MiB  {self.types.get(name, '')}" for name, size in self.files.items()]
        return rows + [f"done in {self.seconds:.1f} s"]


def _check_output(src: Path, out: Path, force: bool) -> None:
    blocking = next((p for p in out.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError(f"cannot write {out}: {blocking} is a file, not a folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise InputError("the output folder must not be the checkpoint folder or inside it (inputs are never modified)")
    if out.exists() and not force:
        raise InputError(f"output folder {out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")


def _check_disk(ckpt: LlavaCheckpoint, parent: Path, outtype: str) -> None:
    need = sum(p.stat().st_size for p in ckpt.shards) * (1.0 if outtype in ("f32", "f16", "bf16") else 1.5)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise InputError(f"not enough disk space in {parent}: about {human_bytes(need)} needed, {human_bytes(free)} free")


def convert(src: str | Path, out: str | Path, opts: ConvertOptions = ConvertOptions()) -> ConvertSummary:
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if opts.outtype not in FTYPES:
        raise InputError(f"unknown output type {opts.outtype!r}; choose one of {', '.join(FTYPES)}")
    if opts.image_size is not None and (isinstance(opts.image_size, bool) or opts.image_size < 1):
        raise InputError(f"--image-size must be a positive integer, got {opts.image_size}")
    if opts.llm_gguf is None:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:  # llama.cpp's converter reads the checkpoint's language model with them
            raise InputError(f"converting a llava-hf checkpoint needs {', '.join(missing)}: pip install 'atp[convert]'")
    ckpt = open_checkpoint(src)
    lay = layout(ckpt.vision)
    check_tensors(ckpt, lay.block, lay.block_map, n_blocks_run(ckpt), text=opts.llm_gguf is None)
    _check_output(src, out, opts.force)
    if opts.atp is not None:
        opts.atp.validate(ckpt.text.get("num_hidden_layers"))
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(ckpt, out.parent, opts.outtype)
    image_size = opts.image_size or int(ckpt.preprocessor.get("crop_size", {}).get("height", ckpt.vision["image_size"]))
    work = out.parent / f".{out.name}.partial"
    log_file = out.parent / f"{out.name}.convert.log"  # kept where the user can read it if the conversion fails
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    summary = ConvertSummary()
    try:
        model_name = MODEL_FILE.format(outtype=opts.outtype if opts.llm_gguf is None else "given")
        mmproj_name = MMPROJ_FILE.format(kind=opts.mmproj_type)
        with tqdm(total=3, desc="convert", unit="stage", leave=True) as bar:
            bar.set_postfix_str("vision tower + projector")
            extra = (lambda w: add_to_writer(w, opts.atp)) if opts.atp is not None else None
            write_mmproj(ckpt, work / mmproj_name, image_size, opts.keep_cls, opts.mmproj_type, extra)
            bar.update()
            bar.set_postfix_str(f"language model ({'convert + quantize' if opts.outtype not in ('f32', 'f16', 'bf16', 'q8_0') else 'convert'})")
            if opts.llm_gguf is not None:
                _copy_llm(opts.llm_gguf, ckpt, work / model_name)
            else:
                convert_text_model(src, work / model_name, opts.outtype, log_file=log_file)
            bar.update()
            bar.set_postfix_str("finishing")
            _replace_folder(work, out)
            log_file.unlink(missing_ok=True)
            bar.update()
        for name in (model_name, mmproj_name):
            summary.files[name] = (out / name).stat().st_size
        summary.types = {model_name: opts.outtype, mmproj_name: opts.mmproj_type +
                         (" + atp" if opts.atp is not None else "")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _copy_llm(gguf_path: Path, ckpt: LlavaCheckpoint, dst: Path) -> None:
    """Take an existing GGUF language model, after checking it is the checkpoint's (width and depth)."""
    reader = gguf.GGUFReader(gguf_path)
    arch = reader.fields["general.architecture"].contents()
    width = int(reader.fields[f"{arch}.embedding_length"].contents())
    depth = int(reader.fields[f"{arch}.block_count"].contents())
    want = (ckpt.text["hidden_size"], ckpt.text.get("num_hidden_layers"))
    if (width, depth) != want:
        raise InputError(f"{gguf_path} is {width} wide and {depth} deep; the checkpoint's language model is "
                         f"{want[0]} wide and {want[1]} deep")
    shutil.copyfile(gguf_path, dst)


def _replace_folder(work: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)


def model_depth(model: Path) -> int:
    try:
        reader = gguf.GGUFReader(model)
        arch = reader.fields["general.architecture"].contents()
        field_ = reader.fields.get(f"{arch}.block_count")
        depth = None if field_ is None else field_.contents()
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise ModelError(f"cannot read {model} as a GGUF language model: {e}") from e
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ModelError(f"{model}: {arch}.block_count = {depth!r}; expected a positive integer")
    return depth


def attach(folder: str | Path, weights: AtpWeights) -> Path:
    """Add or replace ATP weights in a converted folder's mmproj; returns the mmproj path."""
    model, mmproj = find_pair(Path(folder))
    n_visual = check_mmproj(mmproj).n_tokens
    weights.validate(model_depth(model), n_visual, where=f"ATP weights for {folder}")
    attach_atp(mmproj, weights)
    return mmproj
