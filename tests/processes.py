"""Child processes seen through /proc (Linux): which processes a pid started, and which still run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def wait_for_children(process: subprocess.Popen, count: int, seconds: float) -> list[int]:
    """The pids of ``process``'s children once it has ``count`` of them (fewer if it ends or
    ``seconds`` pass first)."""
    children: list[int] = []
    deadline = time.monotonic() + seconds
    while len(children) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        children = children_of(process.pid)
    return children
