r"""Benchmark: dense vs blockwise S²CE (loss + gradient), time and peak memory vs catalogue size.

  python -m experiments.bench.s2ce --items=1000,10000,100000,1000000 --positions=1600,6400 \
      [--json=FILE] [--plot=FILE]

For each catalogue size N and number of positions P (= batch x L), it compiles the loss and
its gradient w.r.t. the hidden states and the item embeddings, reads the peak memory of the
compiled program (XLA buffer assignment: arguments + outputs + temporaries), and times it when
that peak fits in --budget_gib. Dense materialises the [P, N] logits and soft labels;
blockwise scans item blocks with an online logsumexp (fecosr_jax.losses).
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from experiments.tables.bench import s2ce_table

_ITEMS = flags.DEFINE_list("items", ["1000", "10000", "100000", "1000000"], "Catalogue sizes.")
_POSITIONS = flags.DEFINE_list("positions", ["1600"], "Positions P (batch x max length).")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "d: width of hidden states and item embeddings.")
_SEMANTIC = flags.DEFINE_integer("semantic_dim", 64, "d_s: width of the item text vectors.")
_BLOCK = flags.DEFINE_integer("block_size", 4096, "Items per block (blockwise).")
_BUDGET = flags.DEFINE_float("budget_gib", 12.0, "Run only programs whose peak fits in this.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Minimum timed seconds per measurement.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON here.")
_PLOT = flags.DEFINE_string("plot", None, "Write a plot (PNG) here.")


def measure(impl: str, n: int, p: int) -> dict:
    import jax
    import jax.numpy as jnp

    from experiments.bench import common
    from fecosr_jax import losses

    k = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(k[0], (p, _HIDDEN.value))
    items = jax.random.normal(k[1], (n + 1, _HIDDEN.value)) * 0.1
    semantics = jax.random.normal(k[2], (n + 1, _SEMANTIC.value))
    targets = jax.random.randint(k[3], (p,), 1, n + 1)
    mask = jnp.arange(n + 1) > 0
    kw = dict(alpha=0.2, temperature=0.1)

    # Targets, text vectors and mask are arguments, as in training: closed over, XLA would
    # constant-fold the soft labels into the program and time less than training does.
    def loss(h, e, targets, semantics, mask):
        if impl == "dense":
            per = losses.s2ce_loss(h @ e.T, targets, semantics, mask, **kw)
        else:
            per = losses.s2ce_loss_blockwise(
                h, e, targets, semantics, mask, block_size=_BLOCK.value, **kw
            )
        return jnp.mean(per)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args = (hidden, items, targets, semantics, mask)
    start = time.perf_counter()
    exe = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    mem = exe.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    out = {
        "impl": impl,
        "items": n,
        "positions": p,
        "peak_bytes": int(peak),
        "item_table_bytes": int(items.nbytes + semantics.nbytes),
        "compile_s": compile_s,
        "seconds": None,
    }
    if peak <= _BUDGET.value * 2**30:

        def run():
            return jax.block_until_ready(exe(*args))

        run()
        out["seconds"], _ = common.timed(run, min_seconds=_SECONDS.value)
    return out


def plot(runs: list[dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for impl in ("dense", "blockwise"):
        for p in sorted({r["positions"] for r in runs}):
            rs = [r for r in runs if r["impl"] == impl and r["positions"] == p]
            ns = [r["items"] for r in rs]
            label = f"{impl}, P={p}"
            axes[0].plot(ns, [r["peak_bytes"] / 2**20 for r in rs], "o-", label=label)
            timed = [r for r in rs if r["seconds"] is not None]
            axes[1].plot(
                [r["items"] for r in timed], [r["seconds"] for r in timed], "o-", label=label
            )
    axes[0].set_ylabel("peak memory, MiB (XLA buffers)")
    axes[1].set_ylabel("seconds per loss + gradient")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue size N")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    from experiments.bench import common
    from fecosr_jax.store import files

    runs = []
    for p in [int(x) for x in _POSITIONS.value]:
        for n in [int(x) for x in _ITEMS.value]:
            for impl in ("dense", "blockwise"):
                r = measure(impl, n, p)
                runs.append(r)
                if _JSON.value:  # after every measurement, so a run cut short keeps them
                    files.write_text_atomic(
                        _JSON.value,
                        json.dumps({"machine": common.machine(), "runs": runs}, indent=1),
                    )
                shown = "does not fit" if r["seconds"] is None else f"{r['seconds']:.4f} s"
                print(
                    f"{impl:9s} N={n:>9,} P={p:>6,}: peak {r['peak_bytes'] / 2**20:9,.0f} MiB, "
                    f"{shown}",
                    flush=True,
                )
    print(f"\n{common.machine()}; d={_HIDDEN.value}, d_s={_SEMANTIC.value}, block {_BLOCK.value}")
    if not common.on_gpu():
        print(common.NO_GPU_NOTICE)
    print(s2ce_table(runs))
    if _PLOT.value:
        plot(runs, _PLOT.value)


if __name__ == "__main__":
    app.run(main)
