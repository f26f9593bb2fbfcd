"""The project's exceptions. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class AtpError(Exception):
    """Base class: every error that a user can cause or fix."""


class NativeLibraryError(AtpError):
    """libllama lacks the atp entry points (stock build, or a patch of another version)."""


class ModelError(AtpError):
    """A model file is missing, unreadable, or of a kind the runtime does not support."""


class InputError(AtpError):
    """Arguments that would make llama.cpp assert: bad layer ranges, positions, keep sets, shapes."""


class ContextLengthError(InputError):
    """A prompt (with the room asked for its answer) longer than the context."""


class DecodeError(AtpError):
    """llama_decode returned an error code."""


class UsageError(AtpError):
    """The API used in a way it does not allow: a closed Pipeline, two answers at once from one Pipeline."""
