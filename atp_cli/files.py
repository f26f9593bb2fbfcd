"""Output files written the way every atp command writes them: checked before any work, complete or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atp_cli.errors import InputError


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file that cannot be written: its folder is missing or not a folder, or
    the path is a folder itself."""
    if "\x00" in str(path):
        raise InputError(f"{str(path)!r} is not a valid path (NUL byte)")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"the folder of {path} does not exist")
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling to write; renamed onto `path` when the block succeeds, removed when it fails.

    An OSError (full disk, no permission) becomes an InputError naming the file; `path` is never left half-written."""
    path = check_output_file(path)
    tmp = path.with_name(path.name + ".part")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
