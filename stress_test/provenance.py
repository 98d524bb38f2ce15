"""Where a benchmark's figures come from: the machine and the commit they were measured on."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and tool versions of this run."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    mem_total = None
    with contextlib.suppress(OSError, AttributeError):
        found = re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)
        mem_total = round(int(found.group(1)) / 1024**2, 1) if found else None

    def version(command: list[str]) -> str | None:
        if shutil.which(command[0]) is None:
            return None
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else None

    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "mem_gib": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "wrk": version(["wrk", "-v"]),
        "redis": version(["redis-server", "--version"]),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> dict[str, Any]:
    """The short commit of the checkout and whether its work tree has changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(status)}


def header_lines(report: dict[str, Any]) -> list[str]:
    """The first lines of a benchmark's text report: command, date, commit, machine."""
    return [
        f"# {report['command']}",
        f"date {report['date']}  commit {report['git']['commit']}"
        + (" (dirty tree)" if report["git"]["dirty"] else "")
        + f"  elapsed {report['elapsed_s']} s",
        "machine " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
    ]


def report_head(module: str, argv: Sequence[str]) -> dict[str, Any]:
    """The fields every benchmark report starts with: the command that ran `module`, the
    date (UTC), the commit and the machine."""
    return {
        "command": shlex.join(["python", "-m", module, *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": machine_info(),
    }
