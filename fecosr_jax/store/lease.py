"""One writer per workdir: a lease file that a run holds while it writes there.

A run that trains writes `WORKDIR/lease.json`: its owner (host, pid, when it started) and a
heartbeat, the time it last renewed the lease, every HEARTBEAT_S seconds from a thread. Files
work the same on a local disk and on gs://, where there is no flock. A second process that
finds a live lease is refused with one line naming the owner, before it writes anything. A
lease is stale, and is taken over with a message, when its heartbeat is older than STALE_S,
or when its owner ran on this host and that process no longer exists (a run killed with
SIGKILL). The run removes its lease when it ends, whether it finished or failed.

Two processes that start at the same instant cannot both take it: on a local disk the lease
is created whole and exclusively (a hard link to a file of the process's own), so one
creation fails and the others read its owner; where that is not available (gs://)
and when a stale lease is taken over, a process writes its lease, waits SETTLE_S, and reads it
back: of writers within that window only the last one's lease remains, and the others are
refused.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time

from etils import epath

from fecosr_jax.errors import BadInput
from fecosr_jax.store.files import write_text_atomic

LEASE = "lease.json"
HEARTBEAT_S = 30.0  # how often a holder renews its lease
STALE_S = 3 * HEARTBEAT_S  # a heartbeat older than this: the holder is gone
SETTLE_S = 1.0  # how long a writer waits before it reads its lease back (module docstring)


class WorkdirInUse(BadInput):
    """Another live process holds the workdir's lease."""


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _alive_here(owner: dict) -> bool | None:
    """Whether the owner's process still runs, when it ran on this host (None: another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _who(held: dict) -> str:
    return (
        f"pid {held.get('pid')} on {held.get('host')}, started "
        f"{_stamp(float(held.get('started', 0)))} UTC"
    )


def _local(path: epath.Path) -> bool:
    """Whether a path is on a local disk (an exclusive hard link works there), not in a bucket."""
    return "://" not in os.fspath(path)


class Lease:
    """The lease on one workdir (`acquire`, then `release`); the heartbeat thread renews it."""

    def __init__(self, workdir):
        self.path = epath.Path(workdir) / LEASE
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self, held: dict) -> bool:
        """Whether a lease read back is this process's."""
        return all(held.get(k) == self.owner[k] for k in ("host", "pid"))

    def _write(self) -> None:
        write_text_atomic(self.path, json.dumps({**self.owner, "heartbeat": _now()}) + "\n")

    def _read(self) -> dict | None:
        """The lease on disk; None where there is none or it was cut by a crash while it was
        written (nobody holds it then)."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def _refuse(self, held: dict) -> None:
        """Raises WorkdirInUse naming the holder of `held`."""
        raise WorkdirInUse(
            f"{self.path.parent}: another run is writing here ({_who(held)}; its lease "
            f"{self.path}). Wait for it, stop it, or use another --workdir"
        )

    def _create(self) -> bool:
        """Creates the lease exclusively (a local disk): False when another process created
        it first. The lease appears whole: written to a name of this process's own, then
        hard-linked to LEASE, which fails when LEASE exists. (A file created empty and then
        written could be read empty by a racer, which would take it for a crash's leftover.)"""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.owner, "heartbeat": _now()}) + "\n"
        mine = self.path.with_name(f".{LEASE}.{os.getpid()}.{threading.get_ident()}")
        mine.write_text(text)
        try:
            os.link(os.fspath(mine), os.fspath(self.path))
        except FileExistsError:
            return False
        except OSError:  # a disk without hard links: the settle protocol, as on gs://
            return False
        finally:
            mine.unlink(missing_ok=True)
        return True

    def _settle(self) -> None:
        """Writes the lease, waits SETTLE_S and reads it back; refuses when another writer's
        lease replaced it (module docstring)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        time.sleep(SETTLE_S)
        held = self._read()
        if held is not None and not self._mine(held):
            self._refuse(held)

    def acquire(self) -> str | None:
        """Takes the lease, or raises WorkdirInUse naming the live owner. Returns a message
        when it took over a stale lease (None otherwise)."""
        taken_over = None
        if not (_local(self.path) and self._create()):
            # A lease is there, or no exclusive creation (gs://): whose, and is it live?
            held = self._read()
            if held is not None and not self._mine(held):
                alive = _alive_here(held)
                fresh = _now() - float(held.get("heartbeat", 0)) < STALE_S
                if alive or (alive is None and fresh):
                    self._refuse(held)
                reason = "its process is gone" if alive is False else "its heartbeat stopped"
                taken_over = f"{self.path}: took over the lease of {_who(held)}: {reason}"
            self._settle()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="lease")
        self._thread.start()
        return taken_over

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a full disk or a lost bucket: the run's own writes will say so
                pass

    def release(self) -> None:
        """Stops the heartbeat and removes the lease, if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            held = json.loads(self.path.read_text())
        except (json.JSONDecodeError, OSError):
            return
        if self._mine(held):
            self.path.unlink(missing_ok=True)
