r"""Benchmark: what dropout's random bits cost, in the compiled round and in a lone step.

  python -m experiments.bench.dropout [--rounds=4] [--seconds=1] [--json=FILE]

The default config's sizes (hidden 64, 2 blocks, L 20, 400 items with 32-dim text vectors):
- `round`: one federated round of one market (K = 5 local steps of batch 32, S²CE), the
  compiled round of fecosr_jax.federated.round;
- `step`: one training step alone (loss and gradient of full-catalogue CE, batch 64), jitted.
Each with three dropout variants: `flax bits` (the model's: jax.random.bernoulli, a 32-bit
word per element, Flax's bits), `16-bit` (an alternative measured here, not used: two
16-bit uniforms per word, half the words) and `none` (dropout rate 0: the floor). The
variants are timed interleaved over --rounds rounds; best and median per variant. It prints
a table last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics

from absl import app, flags

from experiments.tables.bench import dropout_table

_ROUNDS = flags.DEFINE_integer("rounds", 4, "Interleaved timing rounds per variant.")
_SECONDS = flags.DEFINE_float("seconds", 1.0, "Minimum timed seconds per variant and round.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON here.")


def _bernoulli_16bit(key, p, shape):
    """jax.random.bernoulli's mask from 16-bit uniforms, two per 32-bit word (keep
    probability resolved to 2^-16)."""
    import jax
    import jax.numpy as jnp

    n = math.prod(shape)
    words = jax.random.bits(key, (-(-n // 2),), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(shape)
    return halves.astype(jnp.uint32) < jnp.round(jnp.asarray(p, jnp.float32) * 2**16).astype(
        jnp.uint32
    )


@contextlib.contextmanager
def _masks(variant: str):
    """While tracing: the model's dropout masks drawn as `variant` says."""
    import jax

    original = jax.random.bernoulli
    if variant == "16-bit":
        jax.random.bernoulli = _bernoulli_16bit
    try:
        yield
    finally:
        jax.random.bernoulli = original


def _sizes():
    from experiments.bench import common

    return dataclasses.replace(
        common.CONFIGS["reference"], max_len=20, num_items=400, semantic_dim=32
    )


def _round(variant: str):
    """A callable running one compiled round (state carried), traced under `variant`."""
    import jax

    from experiments.bench import common
    from fecosr_jax.federated import round as fed_round
    from fecosr_jax.federated.config import FedConfig
    from fecosr_jax.model import init_params

    c = _sizes()
    model = c.model_config(dropout=0.0 if variant == "none" else 0.2)
    fed = FedConfig(local_steps=c.local_steps, batch_size=c.batch_size, loss="s2ce")
    mesh = fed_round.make_mesh(jax.devices()[:1])
    compiled = fed_round.build_round(model, fed, 1, mesh)
    data = compiled.put(common.market_arrays(c, 1))
    holder = {"state": compiled.init(init_params(model, jax.random.key(0), c.semantic_dim))}

    def one():
        holder["state"], metrics = compiled.step(holder["state"], data, compiled.values)
        jax.block_until_ready((holder["state"], metrics))

    with _masks(variant):
        one()  # traced and compiled here
    return one


def _step(variant: str):
    """A callable running one jitted training step (loss gradient, batch 64)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fecosr_jax import model as model_lib

    c = _sizes()
    config = c.model_config(dropout=0.0 if variant == "none" else 0.2)
    params = model_lib.init_params(config, jax.random.key(0), c.semantic_dim)
    model = model_lib.SequenceModel(config)
    rng = np.random.default_rng(0)
    n, shape = c.num_items, (64, c.max_len)
    inputs, targets = (jnp.asarray(rng.integers(1, n + 1, shape), jnp.int32) for _ in range(2))
    semantics = jnp.asarray(rng.normal(size=(n + 1, c.semantic_dim)), jnp.float32)
    item_mask = jnp.arange(n + 1) > 0

    def loss(params, key):
        hidden, items = model.apply(
            {"params": params}, inputs, semantics, train=True, rngs={"dropout": key}
        )
        z = model_lib.scores(config, hidden, items, item_mask)
        picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - picked)

    grad = jax.jit(jax.grad(loss))
    key = jax.random.key(1)
    with _masks(variant):
        jax.block_until_ready(grad(params, key))
    return lambda: jax.block_until_ready(grad(params, key))


def main(argv):
    del argv
    from experiments.bench import common

    print(common.machine())
    variants = ("flax bits", "16-bit", "none")
    fns = {(w, v): build(v) for w, build in (("round", _round), ("step", _step)) for v in variants}
    times: dict = {k: [] for k in fns}
    for _ in range(_ROUNDS.value):
        for k, fn in fns.items():
            times[k].append(common.timed(fn, min_seconds=_SECONDS.value)[0] * 1e3)
    rows = []
    for (what, variant), ms in times.items():
        base = statistics.median(times[(what, "flax bits")])
        rows.append(
            {
                "what": what,
                "dropout": variant,
                "best_ms": round(min(ms), 2),
                "median_ms": round(statistics.median(ms), 2),
                "median_vs_flax_bits": round(statistics.median(ms) / base, 3),
                "rounds_ms": [round(t, 2) for t in ms],
            }
        )
    print(
        f"\nRound: 1 market, K 5 x batch 32, S²CE. Step: one gradient, batch 64. Best / median "
        f"of {_ROUNDS.value} interleaved rounds."
    )
    print(dropout_table(rows))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"machine": common.machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
