"""One process of the 2-process test (tests/test_multihost.py): joins a run over localhost with
jax.distributed, runs federated rounds over the mesh of both processes' devices, and saves the
final shared parameters and the round metrics to an .npz file, with the processes that a
checkpoint's space check (process 1 failing it) names on this process.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
"""

import os
import sys

import jax
import numpy as np

from fecosr_jax import distributed
from fecosr_jax.data import leave_one_out, stack_markets, synthetic
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig, init_params
from fecosr_jax.store import checkpoint

MODEL = ModelConfig(
    hidden=16, num_layers=1, num_heads=2, ffn_dim=32, max_len=8, num_experts=2, dropout=0.1
)
GEN = synthetic.SyntheticConfig(
    num_markets=5, users_per_market=30, items_per_market=40, num_clusters=5, semantic_dim=8, seed=7
)
FED = FedConfig(local_steps=3, batch_size=4, client_optimizer="sgd", client_lr=0.5)
ROUNDS = 3


def run_rounds(mesh) -> dict[str, np.ndarray]:
    """ROUNDS compiled rounds over `mesh`: {"param_i": leaf, "market_loss", "delta_cosine"}."""
    splits = [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]
    stacked = stack_markets(splits, num_markets_multiple=mesh.devices.size)
    compiled = fed_round.build_round(MODEL, FED, len(splits), mesh)
    data = compiled.put(fed_round.round_data(stacked, FED))
    state = compiled.init(init_params(MODEL, jax.random.key(0), GEN.semantic_dim))
    for _ in range(ROUNDS):
        state, metrics = compiled.step(state, data)
    metrics, params = jax.device_get((metrics, state.params))
    out = {f"param_{i}": x for i, x in enumerate(jax.tree.leaves(params))}
    out["market_loss"] = metrics["market_loss"][: len(splits)]
    out["delta_cosine"] = np.asarray(metrics["delta_cosine"])
    return out


if __name__ == "__main__":
    process_id, num_processes, port, path = sys.argv[1:5]
    # Read when JAX starts its backend (at the first JAX call below), not at import.
    fast = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"  # conftest's
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=2 {fast}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    assert jax.process_count() == int(num_processes)
    assert len(jax.devices()) == 2 * int(num_processes), jax.devices()
    out = run_rounds(fed_round.make_mesh())
    # A disk full on one process only (process 1 here): every process learns it, and which.
    out["without_space"] = np.asarray(checkpoint.processes_without(int(process_id) != 1))
    np.savez(path, **out)
