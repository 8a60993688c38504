"""Per-market statistics as dicts and Markdown tables (used by the stats CLI and the runner)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fecosr_jax.data.market import Market, catalogue_overlap

MAX_OVERLAP_TABLE = 16  # larger market counts leave the overlap table out
MAX_PROFILE_TARGETS = 1024  # soft_label_profile: targets per market (evenly spaced beyond)


def market_stats(markets: Sequence[Market]) -> list[dict]:
    """[{"market", "users", "items", "interactions"}] for each market."""
    return [
        {
            "market": m.name,
            "users": m.num_users,
            "items": m.num_items,
            "interactions": m.num_interactions,
        }
        for m in markets
    ]


def format_tables(markets: Sequence[Market]) -> str:
    """Markdown tables: sizes per market, then catalogue overlap (shared item ids)."""
    lines = [
        "| market | users | items | interactions | mean length |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in markets:
        lines.append(
            f"| {m.name} | {m.num_users:,} | {m.num_items:,} | "
            f"{m.num_interactions:,} | {m.num_interactions / m.num_users:.1f} |"
        )
    if len(markets) > 1:
        shared = catalogue_overlap(markets) if len(markets) <= MAX_OVERLAP_TABLE else None
        lines.append("")
        if shared is None:
            lines.append(
                f"(catalogue overlap table left out for {len(markets)} > "
                f"{MAX_OVERLAP_TABLE} markets)"
            )
        else:
            names = [m.name for m in markets]
            lines.append("Catalogue overlap: items of the row market also in the column market")
            lines.append("| | " + " | ".join(names) + " |")
            lines.append("| --- |" + " ---: |" * len(names))
            for a, name in enumerate(names):
                cells = [
                    f"{shared[a, b]:,} ({shared[a, b] / shared[a, a]:.0%})"
                    for b in range(len(names))
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def soft_label_profile(semantics: np.ndarray, temperature: float, block: int = 256) -> dict:
    """How the S²CE soft label q = softmax(cos(s_t, s_i) / tau_s) spreads over one catalogue.

    Args:
      semantics: [N + 1, d_s] a market's item vectors (row 0 = padding, left out).
      temperature: tau_s.
      block: targets per matrix product ([block, N] at a time).

    Returns:
      {"target_mass": mean over targets of q_t (the soft label's mass on the target itself),
       "effective_items": median over targets of exp(entropy of q) (1 = all mass on one item,
       N = uniform), "targets": how many targets were measured (all N up to
       MAX_PROFILE_TARGETS, else that many evenly spaced)}. Items with a zero vector have a
       cosine of 0 with every item, as in losses.soft_labels.
    """
    vectors = np.asarray(semantics[1:], np.float64)  # [N, d_s]
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    n = len(unit)
    targets = np.unique(np.linspace(0, n - 1, min(n, MAX_PROFILE_TARGETS)).round().astype(int))
    mass, effective = [], []
    for start in range(0, len(targets), block):
        rows = targets[start : start + block]  # [B]
        logits = unit[rows] @ unit.T / temperature  # [B, N]
        logits -= logits.max(axis=-1, keepdims=True)
        q = np.exp(logits)
        q /= q.sum(axis=-1, keepdims=True)
        mass.append(q[np.arange(len(rows)), rows])
        entropy = -np.sum(q * np.log(np.maximum(q, 1e-300)), axis=-1)
        effective.append(np.exp(entropy))
    return {
        "target_mass": float(np.mean(np.concatenate(mass))),
        "effective_items": float(np.median(np.concatenate(effective))),
        "targets": int(len(targets)),
    }


def soft_label_profiles(markets: Sequence[Market], temperature: float) -> dict:
    """{"temperature", "markets": {market: soft_label_profile + "items"}} for the markets with
    semantic vectors; {} when none has them."""
    profiles = {
        m.name: {"items": m.num_items, **soft_label_profile(m.semantics, temperature)}
        for m in markets
        if m.semantics is not None and m.num_items > 1
    }
    return {"temperature": temperature, "markets": profiles} if profiles else {}


def soft_labels_markdown(soft_labels: dict) -> str:
    """The Markdown table of soft_label_profiles (\"\" for {})."""
    if not soft_labels:
        return ""
    lines = [
        f"S²CE soft labels at tau_s = {soft_labels['temperature']:g} "
        "(config.federated.temperature): the mass a soft label keeps on its target (mean over "
        "targets) and over how many items it spreads (exp of its entropy, median)",
        "",
        "| market | items | target mass | effective items |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, p in soft_labels["markets"].items():
        lines.append(
            f"| {name} | {p['items']:,} | {p['target_mass']:.3f} | {p['effective_items']:.1f} |"
        )
    return "\n".join(lines)
