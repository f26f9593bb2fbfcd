"""atp: adaptive visual-token pruning for LLaVA-style models on CPU, inside llama.cpp.

    import atp_cli

    with atp_cli.Pipeline.from_dir("out/llava-7b", strategy="atp") as pipe:
        result = pipe("photo.jpg", "What is on the table?")
        print(result.text, result.stats.visual_tokens_avg)

The names below are the public API. They are imported on first use, so `import atp_cli` (and the pure-numpy
`atp_cli.pruning`) work without loading the native library.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("atp")
except PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Pipeline": "atp_cli.pipeline",
    "PipelineConfig": "atp_cli.pipeline",
    "Result": "atp_cli.pipeline",
    "Conversation": "atp_cli.conversation",
    "ContextConfig": "atp_cli.runtime.context",
    "SamplerConfig": "atp_cli.sampling",
    "PrefillStats": "atp_cli.driver",
    "build_default_model": "atp_cli.default_model",
    "load_image": "atp_cli.image_input",
    "AtpError": "atp_cli.errors",
    "InputError": "atp_cli.errors",
    "ModelError": "atp_cli.errors",
    "UsageError": "atp_cli.errors",
    "NativeLibraryError": "atp_cli.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atp_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
