"""Leave-one-market-out: each market held out of pretraining (a newcomer) against the same
market as a member of the whole federation (launch/sweep.py --newcomers; raw rows: a folder
per run with its results.json, ranks.npz, training.json and config.json)."""

from __future__ import annotations

import pathlib
import statistics

from experiments.tables.results import RAW
from fecosr_jax.report import newcomers as newcomers_lib
from fecosr_jax.report import sweep_results
from fecosr_jax.store import resume
from fecosr_jax.store.files import read_json

NEWCOMERS_DEFAULT = RAW / "newcomers_default"  # the main job's config, local and fecosr
NEWCOMERS_XMREC = RAW / "newcomers_xmrec"  # XMRec ca / de / fr / uk, local and fedavg_id
NEWCOMERS_ML100K = RAW / "newcomers_ml100k"  # ml-100k regions (11 markets), local and fecosr
AXES = ["newcomers", "seeds"]


# What the runs of one leave-one-market-out study may differ in: its point and seed.
POINT_FIELDS = {"data.newcomers", "data.finetune_markets", "seed"}


def runs(folder: pathlib.Path) -> tuple[list[dict], dict]:
    """The sweep's rows (sweep_results.collect, the grid values from each run's config.json)
    and each run's per-user test ranks. The runs may come from several processes and days;
    one whose config differs from the first run's in more than its point and seed
    (POINT_FIELDS; a field added since, at its old value, is no difference) is refused
    (ValueError), since the pairs assume the same splits and training."""
    rows, ranks = [], {}
    folders = sorted(p for p in folder.iterdir() if p.is_dir())
    configs = [read_json(run / "config.json") for run in folders]
    first = configs[0]
    for run, config in zip(folders, configs, strict=True):
        changed = set(resume.changed_fields(first, config))
        changed &= set(resume.changed_fields(config, first))  # an added field: one way only
        if changed - POINT_FIELDS:
            raise ValueError(
                f"{run}: its config differs from {folders[0].name}'s in "
                f"{', '.join(sorted(changed - POINT_FIELDS))}"
            )
        point = {"newcomers": config["data"]["newcomers"] or "none", "seeds": config["seed"]}
        rows.append(sweep_results.collect(run, point))
        ranks[run.name] = sweep_results.read_ranks(run)
    return rows, ranks


def newcomers_table(folder: pathlib.Path, method: str = "fecosr") -> str:
    """`method`'s leave-one-market-out table (newcomers_lib.table) and a line that
    counts the markets: the newcomer's gains over `local`, marked or not, the share of the
    member's gain it kept (median over the held-out markets whose member gain is
    significant), and what the mean row could detect."""
    rows, ranks = runs(folder)
    (point,) = newcomers_lib.compare(rows, AXES, ranks)
    cells, mean = point["methods"][method]["markets"], point["methods"][method]["mean"]
    lines = newcomers_lib.table(cells, mean)
    gains = [c["newcomer"] for c in cells.values()]
    kept = [c["kept"] for c in cells.values() if c["kept"] is not None]
    worse = [c["newcomer_vs_member"] for c in cells.values()]
    median = f"{statistics.median(kept):.0%}" if kept else "-"
    detectable = [w["detectable"] for w in worse if w.get("detectable") is not None]
    could = f"{statistics.median(detectable):.4f}" if detectable else "-"
    lines += [
        "",
        f"{len(cells)} market{'' if len(cells) == 1 else 's'} held out in turn, "
        f"seeds {', '.join(map(str, point['seeds']))}: "
        f"as a newcomer `{method}` gains over `local` in {sum(g['diff'] > 0 for g in gains)} "
        f"(significantly in {sum(g['verdict'] == 'better' for g in gains)}, below it "
        f"significantly in {sum(g['verdict'] == 'worse' for g in gains)}); the newcomer is "
        f"significantly below the member in {sum(w['verdict'] == 'worse' for w in worse)} "
        f"(a difference of {could} NDCG@10 had 80% power, median over markets); "
        f"median share of the member's gain kept {median} (over the {len(kept)} "
        f"market{'' if len(kept) == 1 else 's'} whose member gain is significant). "
        f"{newcomers_lib.MEAN_ROW.capitalize()}: "
        f"{newcomers_lib.MEAN_ABOUT}; there a newcomer's gain of "
        f"{_number(mean['newcomer']['detectable'])} and a newcomer - member of "
        f"{_number(mean['newcomer_vs_member']['detectable'])} had 80% power.",
    ]
    return "\n".join(lines) + "\n"


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def newcomers_default() -> str:
    """The main job's config (8 synthetic markets), `local` and `fecosr`. Raw rows:
    docs/results/newcomers_default/."""
    return newcomers_table(NEWCOMERS_DEFAULT)


def newcomers_xmrec() -> str:
    """XMRec ca / de / fr / uk (experiments/configs/xmrec.py), `local` and `fedavg_id`, each
    market's member point fine-tuned alone. Raw rows: docs/results/newcomers_xmrec/."""
    return newcomers_table(NEWCOMERS_XMREC, "fedavg_id")


def newcomers_ml100k() -> str:
    """ml-100k regions (experiments/configs/ml100k_regions.py: 11 markets, MiniLM title
    vectors), `local` and `fecosr`. Raw rows: docs/results/newcomers_ml100k/."""
    return newcomers_table(NEWCOMERS_ML100K)
