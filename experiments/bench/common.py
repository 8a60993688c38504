"""Shared pieces of the benchmarks: the benchmark configs, random market data, analytic model
FLOPs, the measured matmul ceiling, timing and the machine's description."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from fecosr_jax.model import ModelConfig
from fecosr_jax.store import metrics_log


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting: the model, the catalogue and the client work per round."""

    name: str
    hidden: int
    max_len: int
    num_items: int  # N: catalogue size per market (indices 1..N)
    batch_size: int
    local_steps: int  # K
    num_layers: int = 2
    num_heads: int = 2
    semantic_dim: int = 64  # d_s of the item text vectors
    num_experts: int = 8
    users_per_market: int = 256

    @property
    def ffn_dim(self) -> int:
        return 4 * self.hidden

    def model_config(self, *, dropout: float = 0.2, dtype: str = "float32") -> ModelConfig:
        return ModelConfig(
            hidden=self.hidden,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            ffn_dim=self.ffn_dim,
            dropout=dropout,
            max_len=self.max_len,
            num_experts=self.num_experts,
            dtype=dtype,
        )


CONFIGS = {
    # The performance targets' reference: hidden 64, L 50, 2 layers, 2 heads, catalogue 2,000,
    # batch 32, K 5.
    "reference": BenchConfig(
        "reference", hidden=64, max_len=50, num_items=2000, batch_size=32, local_steps=5
    ),
    # Small markets: hidden 32, L 20, catalogue 500, batch 16, K 10.
    "small": BenchConfig(
        "small", hidden=32, max_len=20, num_items=500, batch_size=16, local_steps=10
    ),
    # The test suite's check of the scripts (compiles in seconds; its figures mean nothing).
    "tiny": BenchConfig(
        "tiny",
        hidden=16,
        max_len=8,
        num_items=50,
        batch_size=4,
        local_steps=2,
        num_layers=1,
        semantic_dim=8,
        num_experts=2,
        users_per_market=16,
    ),
}


def market_arrays(config: BenchConfig, num_markets: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Round data of `num_markets` random markets [M, ...] (speed only: no structure). Every
    row is a full sequence of L + 1 items, so CE covers all L positions."""
    rng = np.random.default_rng(seed)
    m, n, u = num_markets, config.num_items, config.users_per_market
    semantics = rng.standard_normal((m, n + 1, config.semantic_dim), dtype=np.float32)
    semantics[:, 0] = 0.0
    item_mask = np.ones((m, n + 1), bool)
    item_mask[:, 0] = False
    return {
        "train": rng.integers(1, n + 1, (m, u, config.max_len + 1), dtype=np.int32),
        "num_rows": np.full(m, u, np.int32),
        "semantics": semantics,
        "item_mask": item_mask,
        "market_index": np.arange(m, dtype=np.int32),
        "weight": np.ones(m, np.float32),
    }


def forward_flops(config: BenchConfig) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass over a batch: the item adaptor on
    the catalogue, the Transformer on B x L positions, and the logits over N + 1 items."""
    n1, d, s, e = config.num_items + 1, config.hidden, config.semantic_dim, config.num_experts
    tokens, length = config.batch_size * config.max_len, config.max_len
    adaptor = 2 * n1 * (e * s * d + s * e + e * d)
    per_layer = tokens * (2 * 4 * d * d + 2 * 2 * length * d + 2 * 2 * d * config.ffn_dim)
    logits = 2 * tokens * n1 * d
    return float(adaptor + config.num_layers * per_layer + logits)


def step_flops(config: BenchConfig) -> float:
    """Model FLOPs of one training step: forward + backward = 3 x forward (the usual count)."""
    return 3.0 * forward_flops(config)


def matmul_ceiling(dtype=jnp.float32, sizes: tuple[int, ...] | None = None, seconds=2.0) -> float:
    """Measured matmul GFLOP/s: the best of square products of random matrices in `dtype`.
    Sizes default to 512-2048 on CPU and 2048-8192 on a GPU, where smaller products leave
    the tensor cores idle."""
    if sizes is None:
        sizes = (2048, 4096, 8192) if on_gpu() else (512, 1024, 2048)
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(n), (n, n), dtype)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(sizes):
            f(a).block_until_ready()
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def timed(fn, *, min_seconds: float, min_reps: int = 2) -> tuple[float, int]:
    """(seconds per call, calls) of fn() repeated for at least min_seconds and min_reps."""
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps, reps


def machine() -> str:
    """The machine in words (runs keep the same as training.json's "host")."""
    host = metrics_log.host()
    isa = host["isa"] or "no vector extensions"
    return (
        f"{host['cpu']} with {isa}, {host['cores']} CPU cores, JAX {host['jax']} on "
        f"{host['devices']} ({jax.devices()[0].platform})"
    )


def on_gpu() -> bool:
    return jax.devices()[0].platform == "gpu"


NO_GPU_NOTICE = (
    "No GPU on this machine: these are CPU figures. On a GPU machine, "
    "`bash experiments/bench/gpu.sh OUTDIR` runs every benchmark there (experiments.bench.round "
    "takes --dtype=bfloat16 for the bf16 MFU figure); the H200 figures so far are in "
    "docs/benchmarks.md."
)
