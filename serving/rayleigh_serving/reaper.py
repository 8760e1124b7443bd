"""Local mode's watchdog: whatever happens to `rayleigh up`, the processes it started do not outlive it.

`Reaper.start()` runs `python -m rayleigh_serving.reaper` in its own session with a pipe on its
stdin whose only writer is the parent. The parent tells it what to clean as it starts things:

    group PGID      a process group to kill (Ray's `ray start --block`, the gateway)
    marker DIR      kill every process whose command line names DIR or whose environment has
                    RAY_TMPDIR=DIR (Ray's workers and the vLLM engine processes they spawn)
    rmtree DIR      a directory to remove afterwards (Ray's private temp dir)
    clear           the parent cleaned up itself: forget everything said so far

When the pipe reaches end of file (the parent exited normally, raised, was SIGKILLed or OOM-killed:
the kernel closes its end in every case), the watchdog SIGKILLs what it was told about and exits.
A pipe rather than PR_SET_PDEATHSIG: the death signal fires when the parent *thread* exits and is
Linux only; end of file on a pipe works on every POSIX system and for any way the parent dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path


def kill_marked(markers: Iterable[str], sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to processes whose command line names a marker or whose RAY_TMPDIR is one; their pids."""
    wanted = [(m.encode(), f"RAY_TMPDIR={m}".encode()) for m in markers]
    if not wanted:
        return []
    me = os.getpid()
    hit: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(m in cmdline or env in environ.split(b"\0") for m, env in wanted):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), sig)
                hit.append(int(entry.name))
    return hit


def kill_groups(groups: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def reap(groups: Iterable[int], markers: Iterable[str], dirs: Iterable[str]) -> None:
    """SIGKILL the groups and marked processes (again, until none is left or 5 s pass), remove the dirs."""
    groups, markers = list(groups), list(markers)
    deadline = time.monotonic() + 5.0
    while True:
        kill_groups(groups)
        if not kill_marked(markers) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


class Reaper:
    """The parent's end: tell the watchdog what to clean; it cleans when this process is gone."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls) -> Reaper:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayleigh_serving.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C goes to `rayleigh up` alone
        )
        return cls(proc)

    def _say(self, line: str) -> None:
        if self.proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def group(self, pgid: int) -> None:
        self._say(f"group {pgid}")

    def marker(self, path: str | Path) -> None:
        self._say(f"marker {path}")

    def rmtree(self, path: str | Path) -> None:
        self._say(f"rmtree {path}")

    def clear(self) -> None:
        self._say("clear")

    def close(self) -> None:
        """The parent is done: the watchdog cleans what it still knows of and exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def main() -> None:
    # Ctrl-C in a terminal, or a SIGTERM sent to the parent's group, must not stop the watchdog early.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: list[int] = []
    markers: list[str] = []
    dirs: list[str] = []
    for raw in sys.stdin.buffer:
        verb, _, arg = raw.decode(errors="replace").strip().partition(" ")
        if verb == "group" and arg.isdigit():
            groups.append(int(arg))
        elif verb == "marker" and arg:
            markers.append(arg)
        elif verb == "rmtree" and arg:
            dirs.append(arg)
        elif verb == "clear":
            groups, markers, dirs = [], [], []
    reap(groups, markers, dirs)


if __name__ == "__main__":
    main()
