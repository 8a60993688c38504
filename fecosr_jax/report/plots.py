"""The plots: a run's per-market NDCG@10 bars by method and its training curves, and a sweep's
metrics against its first axis; every series distinguishable (colour, and a hatch or line
style and marker once the colours repeat)."""

from __future__ import annotations

import math

import numpy as np
from etils import epath

from fecosr_jax.report.verdicts import GAIN_METRIC
from fecosr_jax.store.files import write_bytes_atomic


def save_png(fig, path) -> None:
    """Saves a figure as PNG, atomically."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


_COLORS = [f"C{i}" for i in range(10)]  # matplotlib's 10-colour cycle
_HATCHES = ("", "//", "..", "xx")
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def series_style(i: int) -> tuple[str, str, str, str]:
    """(colour, bar hatch, line style, marker) of series i: the colour cycles every 10
    series and the pattern changes with each cycle, so no two of 40 series look alike."""
    cycle = i // len(_COLORS)
    return (
        _COLORS[i % len(_COLORS)],
        _HATCHES[cycle % len(_HATCHES)],
        _LINESTYLES[cycle % len(_LINESTYLES)],
        _MARKERS[cycle % len(_MARKERS)],
    )


def plot(results: dict, curves: dict, workdir: str) -> list[str]:
    """PNG plots: per-market NDCG@10 bars by method, and training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names, methods = results["markets"], list(results["methods"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) * len(methods) / 3 + 3), 4))
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    std = results.get("std")
    for i, m in enumerate(methods):
        vals = [results["methods"][m][n][GAIN_METRIC] or 0.0 for n in names]
        err = [std[m][n][GAIN_METRIC] or 0.0 for n in names] if std else None
        color, hatch, _, _ = series_style(i)
        ax.bar(x + i * width, vals, width, yerr=err, capsize=2, label=m, color=color,
               hatch=hatch, edgecolor="white", linewidth=0)  # fmt: skip
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=45 if len(names) > 8 else 0)
    ax.set_ylabel(f"test {GAIN_METRIC}")
    ax.set_title(results["dataset"])
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(str(epath.Path(workdir) / "markets_ndcg10.png"))
    save_png(fig, paths[-1])

    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, (name, points) in enumerate(curves.items()):
            steps, values = zip(*points, strict=True)
            ax = axes[0] if "pretrain" in name else axes[1]
            color, _, linestyle, marker = series_style(i)
            ax.plot(steps, values, label=name, color=color, linestyle=linestyle, marker=marker,
                    markersize=3)  # fmt: skip
        axes[0].set_xlabel("round")
        axes[0].set_ylabel("training loss")
        axes[0].set_title("federated / pooled pretraining")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("validation NDCG@10 (market mean)")
        axes[1].set_title("fine-tuning")
        for ax in axes:
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(str(epath.Path(workdir) / "curves.png"))
        save_png(fig, paths[-1])
    return paths


def x_positions(values: list[float]) -> tuple[dict[float, float], dict[float, str]]:
    """Where a sweep's axis values sit on the x axis, and tick labels where they need their
    own: inf (epsilon, DP off) sits one doubling right of the largest finite value, as "∞"
    (no ticks without it)."""
    finite = sorted({x for x in values if x != math.inf})
    if math.inf not in values:
        return {x: x for x in finite}, {}
    inf_at = 2 * finite[-1] if finite else 1.0
    ticks = {x: f"{x:g}" for x in finite} | {inf_at: "∞"}
    return {x: x for x in finite} | {math.inf: inf_at}, ticks


def sweep(summary: list[dict], axes: list[str], path) -> bool:
    """NDCG@10 and seconds per round against the first swept axis (error bars: std over
    seeds), a panel each for the --compare gaps and the client-update cosines when there are
    any; one line per method (and per value of the other axes). False if nothing to plot."""
    keys = [a for a in axes if a != "seeds"]
    if not keys or not summary:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_axis, others = keys[0], keys[1:]
    ndcg, timing = "test NDCG@10 (mean over markets' users)", "seconds per federated round"
    gap, cosine = "NDCG@10 gap", "mean pairwise cosine of client updates"
    panels = {ndcg: {}, timing: {}}  # y label -> {line label: [(x, [mean, std])]}
    if any(s["gaps"] for s in summary):
        panels[gap] = {}
    if any(s["delta_cosine"] for s in summary):
        panels[cosine] = {}
    where, ticks = x_positions([s[x_axis] for s in summary])
    for s in summary:
        suffix = "".join(f", {k}={s[k]}" for k in others)
        x = where[s[x_axis]]
        lines = {
            ndcg: {m: v["ndcg@10"] for m, v in s["methods"].items()},
            timing: s["round_s"],
            gap: s["gaps"],
            cosine: s["delta_cosine"],
        }
        for label, values in lines.items():
            for name, v in values.items():
                panels[label].setdefault(name + suffix, []).append((x, v))
    fig, axes_ = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (ylabel, data) in zip(axes_, panels.items(), strict=True):
        ax.set_ylabel(ylabel)
        for i, (label, points) in enumerate(sorted(data.items())):
            points = sorted((x, v) for x, v in points if v is not None)
            if points:
                color, _, linestyle, marker = series_style(i)
                ax.errorbar(
                    [x for x, _ in points], [v[0] for _, v in points],
                    yerr=[v[1] for _, v in points], label=label, color=color,
                    linestyle=linestyle, marker=marker, capsize=3,
                )  # fmt: skip
        ax.set_xlabel(x_axis)
        if x_axis in ("markets", "epsilon"):
            ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(list(ticks), list(ticks.values()))
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return True


def privacy(points: dict, method: str, title: str, path) -> None:
    """A privacy-utility curve: per market, `method`'s test NDCG@10 gain over `local` against
    the privacy budget (experiments.tables.runs.privacy_points: {epsilon: ...}; inf, without
    noise, sits at the right as "∞"), a filled marker where the seed-aware test marks the
    market (after Benjamini-Hochberg over the markets); the market mean over seeds in black
    (error bars: the 95% interval of its test over seeds where the points have one, "mean";
    else its std over seeds), and `local` at 0, as a band: the 95% interval of its own market
    mean over seeds (the points' "local"; a line with one seed), the spread a gain is read
    against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(points)
    where, ticks = x_positions(budgets)
    xs = [where[e] for e in budgets]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.axhline(
        0.0, color="grey", linestyle=":", linewidth=1.5, label="local (nothing leaves the market)"
    )
    half = points[budgets[0]].get("local", [None, None])[1]
    if half:  # local trains once per seed, the same at every budget
        ax.axhspan(-half, half, color="grey", alpha=0.2, linewidth=0,
                   label="local: 95% interval of its market mean over seeds")  # fmt: skip
    markets = points[budgets[0]]["markets"]
    for i, (market, test) in enumerate(markets.items()):
        color, _, linestyle, marker = series_style(i)
        ys = [points[e]["markets"][market]["diff"] for e in budgets]
        ax.plot(xs, ys, color=color, linestyle=linestyle, linewidth=1,
                label=f"{market} ({test['users']:,} test users)")  # fmt: skip
        for x, e, y in zip(xs, budgets, ys, strict=True):
            significant = points[e]["markets"][market]["verdict"] != "same"
            ax.plot([x], [y], marker=marker, color=color, markersize=5,
                    markerfacecolor=color if significant else "white")  # fmt: skip
    mean = [points[e]["gain"][0] for e in budgets]
    if all("mean" in points[e] for e in budgets):
        ci = [points[e]["mean"]["ci"] for e in budgets]
        bars = [
            [m - low for m, (low, _) in zip(mean, ci, strict=True)],
            [high - m for m, (_, high) in zip(mean, ci, strict=True)],
        ]
        label = "market mean (error bars: its 95% interval over seeds)"
    else:
        bars = [points[e]["gain"][1] for e in budgets]
        label = "market mean (error bars: its std over seeds)"
    ax.errorbar(xs, mean, yerr=bars, color="black", linewidth=2.5, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ticks) or xs, list(ticks.values()) or [f"{e:g}" for e in budgets])
    ax.set_xlabel("privacy budget ε of each market (∞: without noise)")
    ax.set_ylabel(f"test NDCG@10, {method} − local")
    ax.set_title(f"{title}\nfilled: marked by the seed-aware test (BH over markets)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save_png(fig, path)
