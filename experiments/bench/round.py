r"""Benchmark: one federated round, vmapped one-jit vs the Python loop vs PyTorch.

  python -m experiments.bench.round --config=reference --markets=1,8,64,256 \
      --backends=vmap,loop,torch [--json=FILE]
  python -m experiments.bench.round --config=small --markets=1,4,16,64,256,1024 \
      --backends=vmap --memory --plot=docs/scaling.png     # scaling with markets

Backends: `vmap` (the one-jit round, markets vmapped; --markets_per_step=b vmaps b at a
time), `scan` (the one-jit round with the markets in sequence inside it: markets_per_step=1),
`loop` (a Python loop over jitted client updates) and `torch`. `--dp=off,on` also measures the
one-jit backends with user-level DP-SGD in every local step (federated/privacy.py: each row a
user, Poisson-sampled; per-user clipped gradients; Gaussian noise; sigma = 1, C = 1, expected
batch half the batch). Measures, side by side in one run: client-steps/s and sequences/s of
each backend and number of markets M, compile time (first round minus a steady round), model
FLOPs per round (analytic: 3 x forward of the fecosr_jax model with its item adaptor) and the
achieved GFLOP/s against the machine's fp32 matmul ceiling measured in the same run.
`--memory` adds the compiled round's peak memory (XLA's buffer assignment: arguments + outputs
+ temporaries) and an ahead-of-time compile time. It prints a table last. The torch backend
needs the [bench] extra (`pip install torch==2.13.0`); it runs on CUDA when PyTorch sees a GPU.
`experiments/bench/gpu.sh` runs every benchmark on a GPU machine in one go.
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

from experiments.bench import common
from experiments.tables.bench import round_table, scaling_table
from fecosr_jax.store import files

_CONFIG = flags.DEFINE_enum("config", "reference", list(common.CONFIGS), "Benchmark config.")
_MARKETS = flags.DEFINE_list("markets", ["1", "8", "64", "256"], "Numbers of markets M.")
_BACKENDS = flags.DEFINE_list(
    "backends",
    ["vmap", "loop", "torch"],
    "vmap (one jit, markets vmapped), scan (one jit, markets in sequence: markets_per_step=1), "
    "loop (Python loop over jitted client updates), torch (PyTorch reference).",
)
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON to this file.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "Minimum timed seconds per measurement.")
_MEMORY = flags.DEFINE_bool("memory", False, "Also report the vmapped round's peak memory.")
_PLOT = flags.DEFINE_string("plot", None, "Write a scaling plot (PNG) of the vmap runs here.")
_CLIENTS = flags.DEFINE_integer(
    "clients_per_round", 0, "Markets sampled per round (partial participation); 0 = all."
)
_PER_STEP = flags.DEFINE_integer(
    "markets_per_step", 0, "vmap backend: markets vmapped together (lax.map over chunks); 0 = all."
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_DP = flags.DEFINE_list(
    "dp",
    ["off"],
    "vmap/scan backends: off (plain local steps) and/or on (DP-SGD: per-user clipping and "
    "noise in every local step).",
)
_RUNS = flags.DEFINE_list(
    "runs",
    ["1"],
    "vmap/scan backends: runs R trained together (seeds 0..R-1 on a leading run axis); "
    "client-steps/s then counts R x M clients.",
)


def fed_config(c: common.BenchConfig, backend: str, dp: bool = False):
    from fecosr_jax.federated.config import FedConfig
    from fecosr_jax.federated.privacy import DPConfig

    return FedConfig(
        local_steps=c.local_steps,
        batch_size=c.batch_size,
        loss="ce",
        clients_per_round=_CLIENTS.value,
        markets_per_step=1 if backend == "scan" else _PER_STEP.value,
        dp=DPConfig(enabled=dp, clip_norm=1.0, noise_multiplier=1.0),
    )


def dp_arrays(c: common.BenchConfig, m: int) -> dict:
    """The DP round's per-market inputs [M]: each row a user (one window each), sampled at
    rate E / U with E half the batch (privacy.DPConfig's default), noise multiplier 1."""
    u = c.users_per_market
    rate = (c.batch_size // 2) / u
    return {
        "dp_rate": np.full(m, rate, np.float32),
        "dp_noise": np.ones(m, np.float32),
        "num_users": np.full(m, u, np.int32),
        "user_rows": np.broadcast_to(np.arange(u, dtype=np.int32)[None, :, None], (m, u, 1)).copy(),
    }


def run_jax(backend: str, c: common.BenchConfig, m: int, runs: int = 1, dp: bool = False) -> dict:
    import dataclasses

    import jax

    from fecosr_jax.federated import round as fed_round
    from fecosr_jax.model import init_params

    model = c.model_config(dtype=_DTYPE.value)
    fed = fed_config(c, backend, dp)
    data = common.market_arrays(c, m)
    if dp:
        data.update(dp_arrays(c, m))
    params = init_params(model, jax.random.key(0), c.semantic_dim)
    extra = {}
    if backend in ("vmap", "scan"):
        devices = jax.devices()
        mesh = fed_round.make_mesh(devices if m % len(devices) == 0 else devices[:1])
        compiled = fed_round.build_round(model, fed, m, mesh)
        data = compiled.put(data)
        values = compiled.values
        if runs > 1:  # R runs of one program: seeds 0..R-1, stacked on a leading axis
            keys = [init_params(model, jax.random.key(r), c.semantic_dim) for r in range(runs)]
            state = compiled.init_runs(fed_round.stack_runs(keys))
            values = fed_round.stack_runs(
                [dataclasses.replace(fed, seed=r).values() for r in range(runs)]
            )
        else:
            state = compiled.init(params)
        if _MEMORY.value:
            start = time.perf_counter()
            exe = compiled.program.step.lower(state, data, values).compile()
            extra["aot_compile_s"] = time.perf_counter() - start
            mem = exe.memory_analysis()
            if mem is not None:
                extra["peak_bytes"] = int(
                    mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                )

        def step(state, data):
            return compiled.step(state, data, values)
    else:
        compiled = fed_round.LoopBackend(model, fed, m)
        data = jax.device_put(data)  # on the device, as for the one-jit round
        state = compiled.init(params)
        step = compiled.step
    holder = {"state": state}

    def one_round():
        holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready((holder["state"], metrics))

    start = time.perf_counter()
    one_round()
    first = time.perf_counter() - start
    round_s, reps = common.timed(one_round, min_seconds=_SECONDS.value)
    if backend in ("vmap", "scan"):
        extra["traces"] = compiled.num_traces  # 1 = no retrace after round 1
    return {"round_s": round_s, "first_round_s": first, "rounds": reps + 1, **extra}


def run_torch(c: common.BenchConfig, m: int) -> dict:
    from experiments.bench import torch_reference

    r = torch_reference.TorchRound(c, common.market_arrays(c, m))
    start = time.perf_counter()
    r.step()
    first = time.perf_counter() - start
    round_s, reps = common.timed(r.step, min_seconds=_SECONDS.value)
    return {"round_s": round_s, "first_round_s": first, "rounds": reps + 1, "device": str(r.device)}


def check_same_model(c: common.BenchConfig) -> tuple[int, float]:
    """The PyTorch reference is the JAX model: the same parameter count, and with the JAX
    parameters copied across, the same scores on a batch of the benchmark's data, dropout off,
    in full float32 (a GPU would otherwise round both sides' products to TF32). Returns (the
    parameter count, the largest score difference relative to the largest score)."""
    import jax
    import numpy as np
    import torch

    from experiments.bench import torch_reference
    from fecosr_jax.model import SequenceModel, init_params

    model = c.model_config()
    params = init_params(model, jax.random.key(0), c.semantic_dim)
    n_jax = sum(x.size for x in jax.tree.leaves(params))
    reference = torch_reference.SequenceModel(c)
    n_torch = torch_reference.num_params(reference)
    if n_jax != n_torch:
        raise AssertionError(f"parameter counts differ: JAX {n_jax}, PyTorch {n_torch}")
    data = common.market_arrays(c, 1)
    inputs, semantics = data["train"][0, : c.batch_size, :-1], data["semantics"][0]

    def forward(params, inputs, semantics):  # [B, L, N + 1], unmasked, temperature 1
        hidden, items = SequenceModel(model).apply({"params": params}, inputs, semantics)
        return hidden @ items.T

    with jax.default_matmul_precision("highest"):
        want = np.asarray(jax.jit(forward)(params, inputs, semantics))
    torch_reference.load_jax_params(reference, jax.device_get(params))
    reference.eval()
    with torch.no_grad():
        got = reference(torch.from_numpy(inputs).long(), torch.from_numpy(semantics)).numpy()
    error = float(np.abs(got - want).max() / np.abs(want).max())
    if not error < 1e-5:
        raise AssertionError(f"same parameters, other scores: relative difference {error:.2e}")
    return n_jax, error


def plot(results: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [
        r
        for r in results["runs"]
        if r["backend"] == "vmap" and r.get("runs", 1) == 1 and not r.get("dp", False)
    ]
    ms = [r["markets"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ms, [r["round_s"] for r in runs], "o-")
    axes[0].set_ylabel("seconds per round")
    axes[1].plot(ms, [r["compile_s"] for r in runs], "o-")
    axes[1].set_ylabel("compile seconds")
    if all("peak_bytes" in r for r in runs):
        axes[2].plot(ms, [r["peak_bytes"] / 2**20 for r in runs], "o-")
    axes[2].set_ylabel("peak memory (MiB, XLA buffers)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("markets M")
    fig.suptitle(f"vmapped round, {results['config']} config, {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    c = common.CONFIGS[_CONFIG.value]
    backends = _BACKENDS.value
    unknown = set(backends) - {"vmap", "scan", "loop", "torch"}
    if unknown:
        raise app.UsageError(
            f"--backends: unknown {sorted(unknown)}; known: vmap, scan, loop, torch"
        )
    if "torch" in backends:
        try:
            import torch
        except ImportError as e:
            raise app.UsageError(
                "--backends=torch needs PyTorch: pip install -e .[bench] (torch==2.13.0)"
            ) from e
        from experiments.bench import torch_reference

        n, error = check_same_model(c)
        print(
            f"same model: {n} parameters in JAX and in PyTorch, the same scores with the same "
            f"parameters (relative difference {error:.1e}); PyTorch {torch.__version__} on "
            f"{torch_reference.default_device()}",
            flush=True,
        )
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
    ceiling = common.matmul_ceiling(dtype)
    print(f"{common.machine()}; {_DTYPE.value} matmul ceiling {ceiling:.1f} GFLOP/s", flush=True)
    flops = common.step_flops(c)
    results = {
        "config": c.name,
        "bench_config": c.__dict__,
        "dtype": _DTYPE.value,
        "machine": common.machine(),
        "matmul_gflops": ceiling,
        "step_gflop": flops / 1e9,
        "gpu": "measured" if common.on_gpu() else common.NO_GPU_NOTICE,
        "runs": [],
    }
    unknown = set(_DP.value) - {"off", "on"}
    if unknown:
        raise app.UsageError(f"--dp: unknown {sorted(unknown)}; known: off, on")
    one_jit = ("vmap", "scan")
    settings = [
        (m, backend, runs, dp == "on")
        for m in [int(x) for x in _MARKETS.value]
        for backend in backends
        for runs in ([int(r) for r in _RUNS.value] if backend in one_jit else [1])
        for dp in (_DP.value if backend in one_jit else ["off"])
    ]
    for m, backend, runs, dp in settings:
        r = run_torch(c, m) if backend == "torch" else run_jax(backend, c, m, runs, dp)
        trained = runs * (min(m, _CLIENTS.value) if _CLIENTS.value else m)
        steps = trained * c.local_steps / r["round_s"]
        run = {
            "backend": backend,
            "markets": m,
            "runs": runs,
            "dp": dp,
            "client_steps_per_s": steps,
            "sequences_per_s": steps * c.batch_size,
            "achieved_gflops": steps * flops / 1e9,
            "compile_s": max(0.0, r["first_round_s"] - r["round_s"]),
            **r,
        }
        results["runs"].append(run)
        if _JSON.value:  # after every run, so a run cut short keeps what it measured
            files.write_text_atomic(_JSON.value, json.dumps(results, indent=1))
        print(
            f"{backend:5s} M={m:5d} R={runs:3d}{' DP' if dp else ''}: {steps:8.1f} "
            "client-steps/s, "
            f"round {r['round_s']:.3f} s, compile {run['compile_s']:.1f} s",
            flush=True,
        )
    print(f"\n{c.name} config {c.__dict__}; model {flops / 1e9:.2f} GFLOP per client step")
    if not common.on_gpu():
        print(common.NO_GPU_NOTICE)
    print(round_table(results))
    one_backend = len(_BACKENDS.value) == 1
    if _MEMORY.value and one_backend and all("peak_bytes" in r for r in results["runs"]):
        print(f"\n{scaling_table(results)}")  # one backend over M, with memory: scaling
    if _PLOT.value:
        plot(results, _PLOT.value)


if __name__ == "__main__":
    app.run(main)
