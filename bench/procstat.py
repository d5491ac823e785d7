"""CPU time and peak memory of a process tree, straight from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" is fixed.
    return text.rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the tree (threads included: /proc/<pid>/stat sums them)."""
    total = 0
    for p in tree(pid):
        fields = _stat_fields(p)
        if fields is not None:
            # After the name: state=0, ppid=1, ... utime=11, stime=12 (stat(5) fields 14, 15).
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _status_kb(pid: int, field: str) -> list[int]:
    """`field` (in kB) from /proc/<p>/status for every process of the tree."""
    values = []
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    values.append(int(line.split()[1]))
        except OSError:
            continue
    return values


def peak_rss_mb(pid: int) -> float:
    """The largest VmHWM in the tree (the worker is one process; children are rare)."""
    return max(_status_kb(pid, "VmHWM"), default=0) / 1024


def rss_mb(pid: int) -> float:
    """Resident memory of the tree now (VmRSS), not its peak."""
    return sum(_status_kb(pid, "VmRSS")) / 1024


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, summed over its cores.

    From the first line of /proc/stat: idle and iowait are not busy; everything else
    (user, system, interrupts, steal) is.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _TICKS, total / _TICKS


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The machine's busy share between two `machine_busy_seconds` readings."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1e-9)
