"""Where a run's time goes, for people: the time per phase (loading, pretraining,
fine-tuning, evaluating) with the seconds JAX spent compiling, and the rate and ETA of a loop.

The compile seconds come from JAX's own monitoring events (the backend compile of every
program, the same durations `JAX_LOG_COMPILES=1` prints), so nothing is timed twice.
"""

from __future__ import annotations

import collections
import contextlib
import time

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PHASES = ("loading", "pretraining", "fine-tuning", "evaluating")  # the order they are shown
_compiled = {"seconds": 0.0, "listening": False}


def _on_duration(event: str, duration: float, **kwargs):
    if event == _COMPILE_EVENT:
        _compiled["seconds"] += duration


def compile_seconds() -> float:
    """Seconds JAX has spent compiling in this process since the first PhaseTimes."""
    return _compiled["seconds"]


class PhaseTimes:
    """Wall seconds per named phase (`with times.phase("pretraining"): ...`), and the
    compile seconds inside them."""

    def __init__(self):
        if not _compiled["listening"]:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _compiled["listening"] = True
        self.start = time.perf_counter()
        self.compile_start = compile_seconds()
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def record(self) -> dict[str, float]:
        """The seconds so far: each phase's (in PHASES order), "other" (outside every phase:
        setting up, writing results), "compiling" (inside them all) and "total" (since this
        object was made), to 0.1 s; training.json keeps it."""
        order = {name: i for i, name in enumerate(PHASES)}
        names = sorted(self.seconds, key=lambda n: order.get(n, len(order)))
        seconds = {name: self.seconds[name] for name in names}
        total = time.perf_counter() - self.start
        seconds["other"] = total - sum(seconds.values())
        seconds["compiling"] = compile_seconds() - self.compile_start
        seconds["total"] = total
        return {name: round(s, 1) for name, s in seconds.items()}

    def summary(self) -> str:
        """`time: loading 3.1 s, pretraining 40.2 s, ..., other 2.0 s; compiling 25.3 s of it;
        total 80 s`."""
        seconds = self.record()
        compiling, total = seconds.pop("compiling"), seconds.pop("total")
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
        return f"time: {parts}; compiling {compiling:.1f} s of it; total {total:.1f} s"


def rate_and_eta(steps_done: int, seconds: float, steps_left: int, unit: str) -> str:
    """`3.2 rounds/s, ETA 28 s` (empty before a step has been timed)."""
    if steps_done <= 0 or seconds <= 0:
        return ""
    rate = steps_done / seconds
    eta = steps_left / rate
    shown = f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.1f} min"
    return f"{rate:.2f} {unit}/s, ETA {shown}"
