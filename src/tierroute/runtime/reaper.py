"""Engines die with their tier: a small watcher process that outlives a tier killed by any
signal (SIGKILL included) and then kills what the tier left behind.

vLLM runs its engine in child processes (EngineCore, workers, multiprocessing's resource
tracker). A tier that exits normally shuts them down; a tier that is killed cannot, and they
are orphaned with their memory (GBs on CPU, the GPU's memory on a GPU) until someone kills them.
The tier starts this watcher before loading its engine, in a session of its own (a signal to
the tier's process group does not reach it). Every POLL_SECONDS it notes the tier's descendants;
once the tier is gone (or a zombie), it kills those still running, then removes the shared
memory segments (/dev/shm) they had mapped and the named semaphores they made, which a killed
process never unlinks. psutil checks
each process's start time, so a reused PID is never hit.

    python -m tierroute.runtime.reaper PID      (started by `watch_me`)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# How often the watcher looks, in seconds: the longest an orphan outlives its tier, about.
POLL_SECONDS = 0.5
# How long the killed processes get to disappear before the watcher reports them.
KILL_WAIT_SECONDS = 10.0
SHM = Path("/dev/shm")


def watch_me() -> subprocess.Popen[bytes]:
    """Start a watcher for this process. It needs no stopping: it exits once this process
    has, after killing whatever this process left running (nothing, after a clean stop)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tierroute.runtime.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def shared_memory_of(pid: int) -> set[str]:
    """The /dev/shm files process `pid` has mapped."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return {
                line.split(maxsplit=5)[5].strip()
                for line in maps
                if "/dev/shm/" in line and len(line.split(maxsplit=5)) == 6
            }
    except OSError:
        return set()


def _gone(process: object) -> bool:
    import psutil

    assert isinstance(process, psutil.Process)
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def main(argv: list[str]) -> int:
    import psutil

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s reaper: %(message)s")
    try:
        tier = psutil.Process(int(argv[0]))
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    segments: set[str] = set()
    while not _gone(tier):
        try:
            for child in tier.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
                    segments |= shared_memory_of(child.pid)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    alive = [p for p in known.values() if not _gone(p)]
    if not alive:
        _remove_semaphores([tier.pid, *known])  # none, after a clean stop
        return 0  # a clean stop: the engine released everything itself
    logger.warning(
        "tier process %d is gone; killing the %d processes it left behind: %s",
        tier.pid,
        len(alive),
        ", ".join(str(p.pid) for p in alive),
    )
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _, stuck = psutil.wait_procs(alive, timeout=KILL_WAIT_SECONDS)
    for segment in sorted(segments):
        try:
            os.unlink(segment)
            logger.warning("removed shared memory %s", segment)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("could not remove shared memory %s: %s", segment, exc)
    _remove_semaphores([tier.pid, *known])
    if stuck:
        logger.error("still running after SIGKILL: %s", ", ".join(str(p.pid) for p in stuck))
        return 1
    return 0


def _remove_semaphores(pids: list[int]) -> None:
    """POSIX named semaphores the processes made and a killed process never unlinked: joblib's
    loky names its own /dev/shm/sem.loky-<pid>-<random> (not mapped, so not in the maps)."""
    for pid in pids:
        for semaphore in sorted(SHM.glob(f"sem.loky-{pid}-*")):
            try:
                semaphore.unlink()
                logger.warning("removed semaphore %s", semaphore)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("could not remove semaphore %s: %s", semaphore, exc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
