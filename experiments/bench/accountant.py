r"""The privacy accountant's cost and bound against its PLD discretisation: one epsilon of the
truncated Poisson subsampled Gaussian (fecosr_jax.federated.accounting.epsilon: jax-privacy's
DpsgdTrainingAccountant, PLD) and of the plain Poisson one beside it, timed, per setting.
Sigma 1, E = T / 2 expected users per step, delta 1 / (10 U), as federated.dp's defaults.

  python -m experiments.bench.accountant --json=docs/bench/accountant_2026-11-30.json
"""

from __future__ import annotations

import time

from absl import app, flags

from experiments.bench import common
from experiments.tables import bench as bench_tables
from fecosr_jax.federated import accounting, privacy
from fecosr_jax.store.files import write_json_atomic

# (discretisation, users U, truncation T, steps); the default 1e-4 timed once, on the small one.
SETTINGS = (
    (1e-4, 40, 8, 8),
    (1e-3, 40, 8, 8),
    (1e-2, 40, 8, 8),
    (1e-3, 1000, 32, 500),
    (1e-2, 1000, 32, 500),
)


def measure(interval: float, users: int, truncated: int, steps: int) -> dict:
    """One setting's row: epsilon and seconds, truncated and (but for 1e-4) plain Poisson."""
    row = {"interval": interval, "users": users, "truncated": truncated, "steps": steps}
    delta = privacy.default_delta(users)
    for name, cap in (("truncated", truncated), ("plain", None)):
        if name == "plain" and interval < 1e-3:
            continue  # slow, and the truncated row is what the default's cost shows
        start = time.perf_counter()
        row[f"epsilon_{name}"] = accounting.epsilon(
            1.0, users, truncated // 2, cap, delta, steps, interval=interval
        )
        row[f"seconds_{name}"] = time.perf_counter() - start
    return row


def main(argv):
    del argv
    rows = [measure(*s) for s in SETTINGS]
    result = {"machine": common.machine(), "rows": rows}
    print(bench_tables.accountant_table(result))
    if flags.FLAGS.json:
        write_json_atomic(flags.FLAGS.json, result)


if __name__ == "__main__":
    # Defined here, not on import: the tests import `measure` beside other benchmarks' --json.
    flags.DEFINE_string("json", None, "Write the rows as JSON here.")
    app.run(main)
