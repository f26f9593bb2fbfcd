"""Reading GGUF files that users hand in: a file that is not GGUF (or is cut short) and a value stored in a form
gguf-py cannot decode both become AtpErrors that name the file or key, never a traceback."""

from __future__ import annotations

from pathlib import Path

import gguf

from atp_cli.errors import AtpError, ModelError


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except (OSError, ValueError, IndexError, KeyError) as e:  # truncated, foreign or unreadable
        raise ModelError(f"cannot read {path} as GGUF: {e}") from e


def field_value(reader: gguf.GGUFReader, key: str, error: type[AtpError] = ModelError):
    """The value of `key` (None when absent); `error` is raised, naming the key, when it cannot be decoded."""
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise error(f"{key} cannot be read: {e}") from e
