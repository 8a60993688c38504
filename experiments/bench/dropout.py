r"""Benchmark: dropout's random bits in a training step, one word per element vs 16-bit halves.

  python -m experiments.bench.dropout [--batch=64] [--length=20] [--rounds=5] [--json=FILE]

One training step of the default model (hidden 64, 2 blocks, FFN 256, 400 items with 32-dim
text vectors; loss and gradient of full-catalogue CE at every position), compiled once per
variant and timed side by side, the variants interleaved over --rounds rounds (the best and
the median round are reported, so a noisy machine shows as a spread):
- `bernoulli`: jax.random.bernoulli masks, one 32-bit word per element (the model's dropout
  before 2026-11-30, Flax's bits);
- `16-bit`: fecosr_jax.model.keep_mask, two 16-bit uniforms per word (the model's dropout);
- `no dropout`: the same step with dropout rate 0 (the floor: what the masks cost on top).
It prints a table last.
"""

from __future__ import annotations

import json
import statistics

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 64, "Sequences per step.")
_LENGTH = flags.DEFINE_integer("length", 20, "Positions per sequence (L).")
_ITEMS = flags.DEFINE_integer("items", 400, "Catalogue size N.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds of timing per variant.")
_SECONDS = flags.DEFINE_float("seconds", 1.0, "Minimum timed seconds per variant and round.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON here.")


def _bernoulli_mask(key, keep, shape):
    """The previous dropout: jax.random.bernoulli's mask (a 32-bit word per element)."""
    import jax
    import jax.numpy as jnp

    return jax.random.bernoulli(key, keep, shape), jnp.asarray(keep, jnp.float32)


def _step(dropout: float, mask_fn):
    """A jitted training step (loss gradient) of the model with dropout `dropout`, its masks
    drawn by mask_fn (fecosr_jax.model.keep_mask's signature), and its arguments."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fecosr_jax import model as model_lib

    config = model_lib.ModelConfig(max_len=_LENGTH.value, dropout=dropout)
    params = model_lib.init_params(config, jax.random.key(0), 32)
    model = model_lib.SequenceModel(config)
    rng = np.random.default_rng(0)
    n, shape = _ITEMS.value, (_BATCH.value, _LENGTH.value)
    inputs = jnp.asarray(rng.integers(1, n + 1, shape), jnp.int32)
    targets = jnp.asarray(rng.integers(1, n + 1, shape), jnp.int32)
    semantics = jnp.asarray(rng.normal(size=(n + 1, 32)), jnp.float32)
    item_mask = jnp.arange(n + 1) > 0

    def loss(params, key):
        hidden, items = model.apply(
            {"params": params}, inputs, semantics, train=True, rngs={"dropout": key}
        )
        z = model_lib.scores(config, hidden, items, item_mask)
        picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - picked)

    original = model_lib.keep_mask
    model_lib.keep_mask = mask_fn  # read when the step is traced, below
    try:
        step = jax.jit(jax.grad(loss))
        jax.block_until_ready(step(params, jax.random.key(1)))
    finally:
        model_lib.keep_mask = original
    return step, params


def main(argv):
    del argv
    import jax

    from experiments.bench import common
    from fecosr_jax import model as model_lib

    print(common.machine())
    variants = {
        "bernoulli": _step(0.2, _bernoulli_mask),
        "16-bit": _step(0.2, model_lib.keep_mask),
        "no dropout": _step(0.0, model_lib.keep_mask),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(_ROUNDS.value):
        for name, (step, params) in variants.items():
            key = jax.random.key(2 + r)
            seconds, _ = common.timed(
                lambda: jax.block_until_ready(step(params, key)),  # noqa: B023
                min_seconds=_SECONDS.value,
            )
            times[name].append(seconds * 1e3)
    floor = min(times["no dropout"])
    rows = []
    for name, ms in times.items():
        rows.append(
            {
                "variant": name,
                "best_ms": round(min(ms), 2),
                "median_ms": round(statistics.median(ms), 2),
                "masks_ms": round(min(ms) - floor, 2),
                "median_vs_bernoulli": round(
                    statistics.median(ms) / statistics.median(times["bernoulli"]), 3
                ),
                "rounds_ms": [round(t, 2) for t in ms],
            }
        )
    print(
        f"\nTraining step (loss + gradient), batch {_BATCH.value} x L {_LENGTH.value}, "
        f"{_ITEMS.value} items, dropout 0.2; best / median of {_ROUNDS.value} interleaved rounds"
    )
    print("| dropout masks | best ms | median ms | masks ms (best - none) | median × bernoulli |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['variant']} | {row['best_ms']:.2f} | {row['median_ms']:.2f} | "
            f"{row['masks_ms']:.2f} | {row['median_vs_bernoulli']:.3f} |"
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"machine": common.machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
