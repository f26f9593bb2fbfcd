"""Peak resident memory of this process over a block of work, sampled by a background thread.

ru_maxrss only ever grows over the life of a process, so it cannot tell one benchmark row from the next;
sampling the current RSS every few milliseconds can.
"""

from __future__ import annotations

import threading

import psutil


class PeakRss:
    """`with PeakRss() as peak: ...` then `peak.mib` is the highest RSS seen inside the block."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakRss":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def mib(self) -> float:
        return self.peak_bytes / 2**20
