"""Was the machine quiet while a benchmark ran? Load, CPU steal and other processes' CPU time, start to end.

A timing taken beside another busy process is worthless (one such run showed atp decoding at 0.03x stock), so the
benchmarks record these figures with their results and warn when they show contention: other processes using more
than a tenth of the cores, or the hypervisor stealing more than 5 % of them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

OTHERS_LIMIT = 0.10  # share of all cores other processes may use before a run counts as contended
STEAL_LIMIT = 0.05
SPREAD_LIMIT = 0.10  # (max - min) / median of one configuration's runs before they count as unsteady


@dataclass(frozen=True)
class Contention:
    seconds: float
    load_start: float  # 1-minute load average
    load_end: float
    steal_share: float  # of all cores' time over the run
    others_share: float  # CPU time of other processes, as a share of all cores' time over the run

    def warnings(self) -> list[str]:
        out = []
        if self.others_share > OTHERS_LIMIT:
            out.append(f"other processes used {self.others_share:.0%} of the CPU during the run: its times are not "
                       "trustworthy (run it on an idle machine)")
        if self.steal_share > STEAL_LIMIT:
            out.append(f"the hypervisor stole {self.steal_share:.0%} of the CPU during the run")
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "warnings": self.warnings()}


def _cpu_jiffies() -> tuple[float, float, float]:
    """(busy, steal, total) seconds of all cores since boot, from /proc/stat (zeros where it is absent)."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0, 0.0, 0.0
    fields = [float(x) for x in stat.read_text().splitlines()[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def _own_cpu_seconds() -> float:
    me = psutil.Process()
    t = me.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class ContentionWatch:
    """`with ContentionWatch() as w: ...` then `w.result`."""

    def __enter__(self) -> "ContentionWatch":
        self.t0, self.load0 = time.monotonic(), os.getloadavg()[0]
        self.cpu0, self.own0 = _cpu_jiffies(), _own_cpu_seconds()
        self.result: Contention | None = None
        return self

    def __exit__(self, *exc) -> bool:
        busy0, steal0, total0 = self.cpu0
        busy1, steal1, total1 = _cpu_jiffies()
        total = max(total1 - total0, 1e-9)
        others = max(0.0, (busy1 - busy0) - (_own_cpu_seconds() - self.own0))
        self.result = Contention(seconds=time.monotonic() - self.t0, load_start=self.load0,
                                 load_end=os.getloadavg()[0], steal_share=(steal1 - steal0) / total,
                                 others_share=others / total)
        return False


def spread(values: list[float]) -> float:
    """(max - min) / median: how far one configuration's runs lie apart."""
    ordered = sorted(values)
    mid = ordered[len(ordered) // 2]
    return (ordered[-1] - ordered[0]) / mid if mid else 0.0
