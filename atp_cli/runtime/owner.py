"""Deterministic release of native resources: `close()`, `with`, and a last-resort `__del__`."""

from __future__ import annotations


class Closeable:
    """Subclasses implement an idempotent `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass
