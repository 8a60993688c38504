"""Stopping cleanly on SIGTERM (a preemption) or Ctrl-C (SIGINT).

While a `Handler` is active, SIGTERM and the first Ctrl-C only record that a stop was asked
for; the training loops check `requested()` after each saved step and raise
errors.Preempted (exit 75). A second Ctrl-C stops at once (KeyboardInterrupt, exit 130).
One handler serves a run (experiments.main) and a sweep (launch/sweep.py, which passes
SIGTERM on to the process it runs). Imports no JAX: a sweep's start-up stays light.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from fecosr_jax.errors import Preempted

_stop: dict[str, str | None] = {"by": None}  # what asked to stop ("SIGTERM", "Ctrl-C"), once
CTRL_C_NOTE = (
    b"Ctrl-C: stopping once the step in progress is saved (Ctrl-C again stops at once; "
    b"the steps saved before stay)\n"
)


def requested() -> bool:
    """Whether SIGTERM or Ctrl-C arrived while the current Handler was active."""
    return _stop["by"] is not None


def asked_by() -> str | None:
    """ "SIGTERM" or "Ctrl-C", whichever asked to stop first; None if neither has."""
    return _stop["by"]


def raise_if_requested(where: str):
    """Between phases (nothing unsaved): on SIGTERM or Ctrl-C, raise Preempted."""
    if requested():
        raise Preempted(f"{_stop['by']}: stopped {where}; everything finished so far is saved")


class Handler:
    """Context manager: while active, SIGTERM and the first Ctrl-C (SIGINT) only set the flag
    `requested()` reads (and SIGTERM calls `on_sigterm`, if given). A second Ctrl-C raises
    KeyboardInterrupt at once, whatever asked to stop first. A SIGINT the process was
    started to ignore (a background job) stays ignored. Outside the main thread it does
    nothing. `ctrl_c_note` is written to stderr on the first Ctrl-C (None: nothing)."""

    def __init__(
        self,
        on_sigterm: Callable[[], None] | None = None,
        ctrl_c_note: bytes | None = CTRL_C_NOTE,
    ):
        self.on_sigterm = on_sigterm
        self.ctrl_c_note = ctrl_c_note

    def __enter__(self):
        _stop["by"] = None
        self.pressed = False  # Ctrl-C once already
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT:
            if self.pressed:  # pressed again: stop now
                signal.signal(signal.SIGINT, self.previous[signal.SIGINT])
                raise KeyboardInterrupt
            self.pressed = True
            if self.ctrl_c_note:
                os.write(2, self.ctrl_c_note)  # not print: a handler may run inside a write
        _stop["by"] = _stop["by"] or ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM")
        if signum == signal.SIGTERM and self.on_sigterm is not None:
            self.on_sigterm()

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        return False
