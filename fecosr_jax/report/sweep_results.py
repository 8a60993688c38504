"""A sweep's results (launch/sweep.py): one row per run from the run's own files, the rows
grouped over seeds (mean ± std, results_lib.mean_std), and the Markdown table."""

from __future__ import annotations

import pathlib
import zipfile

from fecosr_jax import errors
from fecosr_jax.federated import privacy
from fecosr_jax.report import markdown as markdown_lib
from fecosr_jax.report import newcomers as newcomers_lib
from fecosr_jax.report import results as results_lib
from fecosr_jax.report import verdicts
from fecosr_jax.store import metrics_log
from fecosr_jax.store.files import read_json

METRICS = ("ndcg@10", "hr@10", "valid_ndcg@10")  # test, test, validation (fine-tuned methods)
FEDERATED = ("federated_s2ce", "federated_ce", "federated_id_ce")  # pretrainings over markets


def collect(run_dir: pathlib.Path, point: dict) -> dict:
    """One row: the grid values; per method the mean test metrics and the markets
    significantly better / worse than local, and with DP each private pretraining's largest
    epsilon over markets (results.json); the validation NDCG@10, seconds per round and
    client-update cosines (training.json, fecosr_jax.store.metrics_log; from the run's
    metrics.jsonl for a run made before it had one)."""
    row = {"run": run_dir.name, **point, "status": "missing", "methods": {}}
    results_path = run_dir / "results.json"
    if not results_path.exists():
        return row
    results = read_json(results_path)
    training_path = run_dir / metrics_log.TRAINING
    training = (
        read_json(training_path)
        if training_path.exists()
        else metrics_log.training_record(metrics_log.read_lines(run_dir))
    )
    row["status"] = "done"
    row["num_markets"] = len(results["markets"])
    row["methods"] = {
        m: {k: table["mean"].get(k) for k in METRICS} for m, table in results["methods"].items()
    }
    for method, valid in training["validation"].items():
        if method in row["methods"]:
            row["methods"][method]["valid_ndcg@10"] = valid["mean"]
    row["vs_local"] = {
        m: [c.get("markets_significantly_better"), c.get("markets_significantly_worse")]
        for m, c in results.get("vs_local", {}).items()
    }
    pretraining = training["pretraining"].items()
    row["round_s"] = {
        k: p["seconds_per_round"] for k, p in pretraining if p["seconds_per_round"] is not None
    }
    row["delta_cosine"] = {
        k: p["delta_cosine"] for k, p in pretraining if p["delta_cosine"] is not None
    }
    row["run_s"] = training["seconds"]
    # With DP on: the largest epsilon any market spent, per private pretraining.
    row["epsilon_spent"] = {
        k: privacy.epsilon_json(max(privacy.epsilon_read(m["epsilon"]) for m in markets.values()))
        for k, markets in results.get("privacy", {}).items()
    }
    return row


def read_ranks(run_dir: pathlib.Path) -> dict | None:
    """A finished run's per-user test ranks (ranks.npz), None where it has none."""
    path = run_dir / "ranks.npz"
    if not path.exists():
        return None
    try:
        return results_lib.read_ranks(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise errors.BadInput(f"{path}: unreadable ({e}); re-run that point") from e


def seed_aware(members: list[dict], ranks: dict) -> dict:
    """A group's seed-aware tests against `local` (verdicts.seed_aware) over its members'
    seeds, from each run's ranks ({run name: {method: {market: [U]}}}): {} where a member has
    no ranks or the members' test users differ."""
    per_run = [ranks.get(r["run"]) for r in members]
    if not per_run or any(r is None or "local" not in r for r in per_run):
        return {}
    names = list(per_run[0]["local"])
    users = {n: len(per_run[0]["local"][n]) for n in names}
    if any({n: len(v) for n, v in r["local"].items()} != users for r in per_run):
        return {}
    return verdicts.seed_aware(results_lib.pool_ranks(per_run), names)


def summarise(
    rows: list[dict],
    axes: list[str],
    pairs: list[tuple[str, str]] | None = None,
    ranks: dict | None = None,
) -> list[dict]:
    """Rows grouped over seeds: per group the mean and std over seeds (results_lib.mean_std:
    ddof 1, 0 for one seed; None where a seed lacks the value) of every method's metrics,
    the seconds per round, the update cosines, per pair (A, B) the NDCG@10 gap A - B and,
    given the runs' per-user ranks ({run name: ranks}, `read_ranks`), every method's
    seed-aware tests against `local` over the group's seeds ("vs_local", `seed_aware`)."""
    keys = [a for a in axes if a != "seeds"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)

    def stats(values):
        mean, std = results_lib.mean_std(values)
        return None if mean is None else [mean, std]

    out = []
    for values, members in groups.items():
        methods = sorted({m for r in members for m in r["methods"]})
        kinds = sorted({k for r in members for k in r["round_s"]})
        out.append(
            {
                **dict(zip(keys, values, strict=True)),
                "seeds": len(members),
                "methods": {
                    m: {
                        k: stats([r["methods"].get(m, {}).get(k) for r in members]) for k in METRICS
                    }
                    for m in methods
                },
                "round_s": {k: stats([r["round_s"].get(k) for r in members]) for k in kinds},
                "delta_cosine": {
                    k: stats([r["delta_cosine"].get(k) for r in members])
                    for k in sorted({k for r in members for k in r["delta_cosine"]})
                },
                "gaps": {
                    f"{a} - {b}": stats([_gap(r, a, b) for r in members]) for a, b in pairs or []
                },
                "vs_local": seed_aware(members, ranks or {}),
            }
        )
    return out


def _gap(row: dict, a: str, b: str) -> float | None:
    va = row["methods"].get(a, {}).get("ndcg@10")
    vb = row["methods"].get(b, {}).get("ndcg@10")
    return None if va is None or vb is None else va - vb


def _marks(test: dict | None) -> str:
    """A method's seed-aware verdicts at one grid point: ▲ n / ▼ n (fragile ones)."""
    if not test:
        return "-"
    tests = test["markets"].values()
    seeds = next(iter(tests))["seeds"]
    counts = []
    for verdict in ("better", "worse"):
        symbol = markdown_lib.mark({"seeds": seeds, "verdict": verdict, "robust": None}).strip()
        marked = [t for t in tests if t["verdict"] == verdict]
        fragile = sum(t["robust"] is False for t in marked)
        counts.append(f"{symbol} {len(marked)}" + (f" ({fragile} †)" if fragile else ""))
    return " / ".join(counts)


def _cell(s) -> str:
    if s is None:
        return "-"
    return f"{s[0]:.4f}" if s[1] == 0 else f"{s[0]:.4f} ± {s[1]:.4f}"


def _per_point(summary: list[dict], keys: list[str], about: str, methods: list[str], cell) -> list:
    """Markdown lines of a table with a row per grid point (its axis values and seeds) and a
    column per method, each cell `cell(point, method)`, under the line `about`; none without
    methods."""
    if not methods:
        return []
    lines = [
        "",
        about,
        "",
        "| " + " | ".join([*keys, "seeds", *methods]) + " |",
        "|" + " --- |" * (len(keys) + 1 + len(methods)),
    ]
    for s in summary:
        cells = [str(s[k]) for k in keys] + [str(s["seeds"])] + [cell(s, m) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(summary: list[dict], rows: list[dict], axes: list[str], config: str, lomo=()) -> str:
    """sweep.md: the grid points' table, their validation NDCG@10 and markers against
    `local`, and with the newcomers axis the leave-one-market-out tables (`lomo`,
    `newcomers.compare`)."""
    keys = [a for a in axes if a != "seeds"]
    methods = sorted({m for s in summary for m in s["methods"]})
    # The federated pretrainings' timings and cosines (sweep.json has every pretraining's).
    kinds = sorted({k for s in summary for k in s["round_s"] if k in FEDERATED})
    cosines = sorted({k for s in summary for k in s["delta_cosine"] if k in FEDERATED})
    lines = [
        f"# Sweep of {config}",
        "",
        "Mean test NDCG@10 (user-weighted over markets; mean ± std over seeds), seconds per "
        "federated round (median gap between rounds, checkpointing included) and the mean "
        "pairwise cosine of the client updates.",
        "",
    ]
    header = [*keys, "seeds", *methods, *(f"s/round {k}" for k in kinds)]
    gaps = list(summary[0]["gaps"]) if summary else []
    header += [f"cosine {k}" for k in cosines] + gaps
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for s in summary:
        cells = [str(s[k]) for k in keys] + [str(s["seeds"])]
        cells += [_cell(s["methods"].get(m, {}).get("ndcg@10")) for m in methods]
        cells += [_cell(s["round_s"].get(k)) for k in kinds]
        cells += [_cell(s["delta_cosine"].get(k)) for k in cosines]
        cells += [_cell(s["gaps"][g]) for g in gaps]
        lines.append("| " + " | ".join(cells) + " |")
    valid = [
        m for m in methods if any(s["methods"].get(m, {}).get("valid_ndcg@10") for s in summary)
    ]
    lines += _per_point(
        summary,
        keys,
        "Validation NDCG@10 of the fine-tuned methods (per market its best epoch, mean over "
        "markets): the one to choose settings by.",
        valid,
        lambda s, m: _cell(s["methods"].get(m, {}).get("valid_ndcg@10")),
    )
    aware = sorted({m for s in summary for m in s.get("vs_local", {})})
    if aware:
        first = next(s["vs_local"] for s in summary if s.get("vs_local"))
        lines += _per_point(
            summary,
            keys,
            "Against `local`, per grid point: the markets significantly better / worse "
            f"({markdown_lib.marks_legend(next(iter(first.values())))}; "
            "fragile ones in brackets).",
            aware,
            lambda s, m: _marks(s.get("vs_local", {}).get(m)),
        )
    lines += newcomers_lib.markdown(list(lomo), axes)
    failed = [r["run"] for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", f"Runs without results: {', '.join(failed)} (see runs/<name>/sweep.log)."]
    return "\n".join(lines) + "\n"
