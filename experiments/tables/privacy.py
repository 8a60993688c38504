"""docs/results.md's privacy tables from the raw files committed under docs/results/:
which DP settings learn, from short runs of one seed (PROBES: each run's config.json and
metrics.jsonl), and the privacy-utility curves of the privacy sweeps over seeds (CURVES: each
run's results.json and per-user ranks), as tables and plots. experiments.tables.registry
names the tables (PROBES, CURVES) and the plots."""

from __future__ import annotations

import dataclasses
import math
import pathlib

from experiments.tables import results as results_tables
from experiments.tables import runs as run_tables
from experiments.tables.cells import plain, row
from experiments.tables.results import RAW
from fecosr_jax.federated import privacy
from fecosr_jax.report import plots
from fecosr_jax.store import metrics_log
from fecosr_jax.store.files import read_json

# -- Which DP recipe learns: short runs of one seed, each row a recipe -----------------------


@dataclasses.dataclass(frozen=True)
class Probe:
    """Short runs of experiments.main, each in folder/<run>/ (config.json, metrics.jsonl), in
    the table's order, and the rounds whose pretraining loss the table shows."""

    folder: pathlib.Path
    runs: tuple[str, ...]
    rounds: tuple[int, ...]


PROBES = {
    # fedavg_id on XMRec, 20 rounds, seed 0: the default recipe (no DP, clipping only, sigma
    # 0.6), then larger expected batches with one local step and each client / server optimiser.
    "dp_recipes": Probe(
        RAW / "dp_recipes",
        (
            "default_nodp",
            "default_sigma0",
            "default",
            "adam1e-3",
            "adam1e-4",
            "fedadam1e-3",
            "fedadam1e-2",
            "sgd1",
            "sgd3",
            "sgd10",
            "sgd3_sigma0",
        ),
        (1, 10, 20),
    ),
    # fecosr on ml-100k regions, 10 rounds, seed 0: client SGD with one local step, the
    # recipe of the ml-100k privacy sweep, against the default without DP.
    "dp_recipes_ml100k": Probe(
        RAW / "dp_recipes_ml100k",
        ("default_nodp", "sgd1_sigma0", "sgd3_sigma0", "sgd3"),
        (1, 5, 10),
    ),
}


def recipe(config: dict) -> list[str]:
    """A run's DP recipe as the table's cells: E / T / K, client and server optimisers, sigma."""
    fed = config["federated"]
    dp = fed["dp"]
    expected = dp["expected_batch_size"] or fed["batch_size"] // 2
    return [
        f"{expected if dp['enabled'] else '-'} / {fed['batch_size']} / {fed['local_steps']}",
        f"{fed['client_optimizer']} {fed['client_lr']:g}",
        f"{fed['server_optimizer']} {fed['server_lr']:g}",
        f"{dp['noise_multiplier']:g}" if dp["enabled"] else "off",
    ]


def probe_table(name: str) -> str:
    """Per run of PROBES[name]: its recipe, the epsilon spent after the last round (the
    largest market; "∞" with sigma 0, "-" without DP), the pretraining loss (the markets' mean
    training loss) at the probe's rounds, and the validation NDCG@10 (market mean) after one
    fine-tuning epoch."""
    probe = PROBES[name]
    rounds = " / ".join(str(r) for r in probe.rounds)
    headers = ["run", "E / T / K", "client", "server", "σ", "ε spent", f"loss, round {rounds}"]
    lines = [
        row([*headers, "validation"]),
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in probe.runs:
        folder = probe.folder / name
        logged = metrics_log.read_lines(folder)
        pretrain = {x["step"]: x for x in logged if x["stage"] == "pretrain"}
        (valid,) = [x["valid_ndcg@10"] for x in logged if x["stage"] == "finetune"]
        last = pretrain[max(pretrain)]
        spent = privacy.epsilon_read(last["epsilon"]) if "epsilon" in last else None
        spent = "-" if spent is None else "∞" if math.isinf(spent) else f"{spent:.2f}"
        losses = " / ".join(plain(pretrain[r]["loss"], 3) for r in probe.rounds)
        cells = recipe(read_json(folder / "config.json"))
        lines.append(row([name, *cells, spent, losses, plain(valid)]))
    return "\n".join(lines) + "\n"


# -- The privacy-utility curves: seeds 0-2 at each epsilon, against one `local` ---------------

PRIVACY_SEEDS = range(3)


@dataclasses.dataclass(frozen=True)
class Curve:
    """A privacy sweep (launch/sweep.py --epsilon=...: folders eps<e>_seed<s>/), the method,
    the plot's title and its seeds. The ∞ column and the `local` every column is compared
    with: `without_dp` (seed_<s>/ of a run over seeds, the same config without DP: the
    curves made before a sweep ran ∞ with the same recipe), or None for the sweep's own
    epsinf_seed<s>/ (one recipe for every point) and each run's own `local`, or with
    `local_from` ("eps8.0") the `local` of the sweep's <local_from>_seed<s>/ (a sweep whose
    other budgets trained the method alone: `local` does not depend on DP)."""

    sweep: pathlib.Path
    budgets: tuple[float, ...]
    without_dp: pathlib.Path | None
    method: str
    title: str
    seeds: tuple[int, ...] = tuple(PRIVACY_SEEDS)
    local_from: str | None = None

    def local(self) -> list[pathlib.Path] | None:
        if self.without_dp is not None:
            return [self.without_dp / f"seed_{s}" for s in self.seeds]
        if self.local_from is not None:
            return [self.sweep / f"{self.local_from}_seed{s}" for s in self.seeds]
        return None

    def columns(self) -> dict[float, list[pathlib.Path]]:
        runs = {e: [self.sweep / f"eps{e}_seed{s}" for s in self.seeds] for e in self.budgets}
        inf = [
            self.without_dp / f"seed_{s}" if self.without_dp else self.sweep / f"epsinf_seed{s}"
            for s in self.seeds
        ]
        return runs | {math.inf: inf}

    def points(self) -> dict:
        """The curve's points (run_tables.privacy_points): per budget, per market the test
        against `local`, the gain over seeds and the epsilon spent."""
        return run_tables.privacy_points(self.columns(), self.seeds, self.method, self.local())


CURVES = {
    "privacy_xmrec": Curve(
        RAW / "privacy_xmrec",
        (1.0, 2.0, 4.0, 8.0),
        results_tables.XMREC_SEEDS,
        "fedavg_id",
        "XMRec ca / de / fr / uk, the DP defaults (client Adam, E = 16, K = 5)",
    ),
    "privacy_xmrec_sgd": Curve(
        RAW / "privacy_xmrec_sgd",
        (1.0, 8.0),
        results_tables.XMREC_SEEDS,
        "fedavg_id",
        "XMRec, DP with client SGD (lr 3, E = 128, K = 1); ∞: the defaults without DP",
    ),
    "privacy_ml100k_sgd": Curve(
        RAW / "privacy_ml100k_sgd",
        (1.0, 2.0, 4.0, 8.0),
        results_tables.ML100K_SEEDS,
        "fecosr",
        "ml-100k regions, DP with client SGD (lr 3, E = 16, K = 1); ∞: the defaults without DP",
    ),
    # One recipe for every point: ∞ is DP's mechanism at σ = 0 (launch/sweep.py
    # --epsilon_inf=noiseless), `local` is ε = 8's process's (the other budgets train `fecosr`
    # alone). ε = 1 joins `budgets` as their raw rows land.
    "privacy_ml100k_one": Curve(
        RAW / "privacy_ml100k_one",
        (2.0, 4.0, 8.0),
        None,
        "fecosr",
        "ml-100k regions, one recipe at every ε (client SGD lr 3, E = 16, K = 1); ∞: σ = 0",
        (0, 1, 2, 3, 4),
        local_from="eps8.0",
    ),
}


def curve_table(name: str) -> str:
    """CURVES[name] as a table (run_tables.privacy_curve)."""
    c = CURVES[name]
    return run_tables.privacy_curve(c.columns(), c.seeds, c.method, c.local())


def curve_figure(name: str, path: pathlib.Path) -> None:
    """CURVES[name] as a plot (plots.privacy) in `path`."""
    c = CURVES[name]
    plots.privacy(c.points(), c.method, c.title, path)
