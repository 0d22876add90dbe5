"""What every figure names: the machine (CPU model, cores, RAM), the versions (python, torch,
transformers, peft, adapterctl's git commit), the date, and how loaded the machine was."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def version(dist: str) -> str:
    """Installed version, read from the package's metadata (nothing imported)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path) -> str:
    """Short commit of the checkout, '+changes' when the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False).stdout.strip()
    sha = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return sha + ("+changes" if dirty else "")


def machine_info(repo: Path) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "ram_gb": ram_gb(),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "torch": version("torch"), "transformers": version("transformers"),
            "peft": version("peft"), "adapterctl": git_commit(repo),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


class LoadSampler:
    """The 1-minute load average every 15 s in a background thread: how busy the machine was."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"median": round(statistics.median(s), 2), "max": round(max(s), 2),
                "samples": len(s)}


def busy_words(meta: dict) -> str:
    """'busy'/'quiet' from the load sampled during the run, against the cores: the benchmarks
    themselves keep up to every core busy, so a load well above the core count is other work."""
    return "busy" if meta["load"]["median"] > 1.25 * meta["cores"] else "quiet"


def footer(meta: dict) -> str:
    """Two lines for the foot of every figure."""
    return (f"{meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']:.0f} GB RAM; "
            f"machine {busy_words(meta)} (load avg median {meta['load']['median']}, max "
            f"{meta['load']['max']}); {meta['mode']} run, {meta['date']}\n"
            f"Python {meta['python']}, torch {meta['torch']}, transformers {meta['transformers']}, "
            f"peft {meta['peft']}, adapterctl {meta['adapterctl']}")
