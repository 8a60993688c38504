"""docs/benchmarks.md's H200 tables from the lease's raw output (docs/bench/h200/*.txt: what
experiments.bench.round printed on the GPU, one line per run). No JAX here.

The two calls of 2026-11-27 (docs/benchmarks.md "H200"): call 1 ran gpu.sh's sections, each
cut off by its time limit; call 2 ran the M = 256 small round and the M = 64 bf16 reference
round that call 1 had not reached.
"""

from __future__ import annotations

import pathlib
import re

from experiments.tables.bench import BENCH
from experiments.tables.cells import row
from fecosr_jax.store.files import read_json

H200 = BENCH / "h200"
# A run's line: "vmap  M=    8:  15092.8 client-steps/s, round 0.005 s, compile 0.0 s".
_RUN = re.compile(
    r"^(?P<backend>\w+)\s+M=\s*(?P<markets>\d+):\s+(?P<rate>[\d.]+) client-steps/s, "
    r"round (?P<round>[\d.]+) s, compile (?P<compile>[\d.]+) s$"
)
_CEILING = re.compile(r"matmul ceiling (?P<gflops>[\d.]+) GFLOP/s")


def read_round_text(path: pathlib.Path) -> dict:
    """A round benchmark's printed output: its matmul ceiling (GFLOP/s) and its runs keyed by
    (backend, M), each {"client_steps_per_s", "round_s", "compile_s"}."""
    text = path.read_text()
    ceiling = _CEILING.search(text)
    if ceiling is None:
        raise ValueError(f"{path}: no 'matmul ceiling ... GFLOP/s' line")
    runs = {}
    for line in text.splitlines():
        m = _RUN.match(line)
        if m:
            runs[(m["backend"], int(m["markets"]))] = {
                "client_steps_per_s": float(m["rate"]),
                "round_s": float(m["round"]),
                "compile_s": float(m["compile"]),
            }
    return {"matmul_gflops": float(ceiling["gflops"]), "runs": runs}


def _rate(r: dict | None) -> str:
    return f"{r['client_steps_per_s']:,.0f}" if r else ""


def _ratio(a: dict, b: dict | None) -> str:
    return f"{a['client_steps_per_s'] / b['client_steps_per_s']:.1f}×" if b else "-"


def bench_h200_small() -> str:
    """The small config's vmapped round against the per-market loop (call 1; call 2's M = 256
    beside call 1's); a loop that did not finish is "cut off"."""
    first = read_round_text(H200 / "call1_small.txt")["runs"]
    second = read_round_text(H200 / "call2_small256.txt")["runs"]
    lines = [
        "| M | vmap client-steps/s | vmap round s | loop client-steps/s | loop round s | "
        "vmap / loop |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backend, m in first:
        if backend != "vmap":
            continue
        vmap, loop = first[("vmap", m)], first.get(("loop", m))
        rate = _rate(vmap)
        if ("vmap", m) in second:
            rate += f" ({_rate(second[('vmap', m)])} in call 2)"
        cells = [m, rate, f"{vmap['round_s']:.3f}"]
        if loop:
            cells += [_rate(loop), f"{loop['round_s']:.3f}", _ratio(vmap, loop)]
        else:
            cells += ["cut off", "", ""]
        lines.append(row(cells))
    return "\n".join(lines) + "\n"


def bench_h200_reference_bf16() -> str:
    """The reference config in bf16, vmapped round (call 1's M = 1 and 8, call 2's M = 64):
    model FLOPs per client step (the CPU benchmark's, docs/bench/round_reference.json: the
    dtype does not change them) against the bf16 matmul ceiling measured in the same call."""
    step_gflop = read_json(BENCH / "round_reference.json")["step_gflop"]
    calls = [
        read_round_text(H200 / f) for f in ("call1_reference_bf16.txt", "call2_ref_bf16_big.txt")
    ]
    lines = [
        "| M | client-steps/s | round s | TFLOP/s | MFU | loop client-steps/s | vmap / loop | "
        "compile s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for call in calls:
        for backend, m in call["runs"]:
            if backend != "vmap":
                continue
            vmap, loop = call["runs"][("vmap", m)], call["runs"].get(("loop", m))
            gflops = vmap["client_steps_per_s"] * step_gflop
            lines.append(
                row(
                    [
                        m,
                        _rate(vmap),
                        f"{vmap['round_s']:.3f}",
                        f"{gflops / 1000:.1f}",
                        f"{100 * gflops / call['matmul_gflops']:.1f}%",
                        _rate(loop) or "-",
                        _ratio(vmap, loop),
                        f"{vmap['compile_s']:.1f}",
                    ]
                )  # fmt: skip
            )
    return "\n".join(lines) + "\n"
