"""Which files make a model: a folder written by `atp convert`, or a language-model GGUF and an mmproj GGUF as
they come from llama.cpp's ecosystem. Inference and conversion both read this layout, so it lives here."""

from __future__ import annotations

from pathlib import Path

from atp_cli.errors import InputError, ModelError

MODEL_FILE = "model-{outtype}.gguf"
MMPROJ_FILE = "mmproj-{kind}.gguf"


def find_pair(folder: Path) -> tuple[Path, Path]:
    """The model and mmproj GGUF files of a converted folder."""
    models = sorted(folder.glob("model-*.gguf"))
    mmprojs = sorted(folder.glob("mmproj-*.gguf"))
    if len(models) != 1 or len(mmprojs) != 1:
        raise InputError(f"{folder} must hold exactly one model-*.gguf and one mmproj-*.gguf (or give the two files "
                         "with --gguf and --mmproj)")
    return models[0], mmprojs[0]


def model_pair(folder: Path | None, gguf: Path | None, mmproj: Path | None) -> tuple[Path, Path] | None:
    """The (model, mmproj) a command was given: a folder, or both files; None when neither (the default model)."""
    if (gguf is None) != (mmproj is None):
        raise InputError("--gguf and --mmproj go together: the language model and its vision projector")
    if gguf is not None:
        if folder is not None:
            raise InputError("give either --model FOLDER or --gguf FILE --mmproj FILE, not both")
        for path in (gguf, mmproj):
            if not path.is_file():
                raise InputError(f"file not found: {path}")
        return gguf, mmproj
    if folder is not None and not folder.is_dir():
        raise ModelError(f"no model folder at {folder}; pass --model FOLDER (made by `atp convert`)")
    return None if folder is None else find_pair(folder)
