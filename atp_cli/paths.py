"""Where atp keeps what it builds once and reuses: the one definition of the cache folder.

`ATP_CACHE_DIR` wins, then `$XDG_CACHE_HOME/atp`, then `~/.cache/atp`. `native_patch/build_wheel.py` applies the
same rule on its own (it runs before this package is installed and uses the standard library only).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here)."""
    explicit = os.environ.get("ATP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "atp"


def cache_dir(name: str) -> Path:
    """A named part of the cache: 'default-model', 'bench', 'wheels', 'tools', 'sdist'."""
    return cache_root() / name
