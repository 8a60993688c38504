"""The experiment runner: config + workdir -> outputs in the workdir.

Current scope (stage 1): federated pretraining of the shared model on every market's item
text vectors (S²CE or CE), then full-ranking evaluation per market next to the popularity
baseline. Outputs: config.json, metrics.jsonl (one line per round), results.json and
results.md. Fine-tuning and the paradigm grid come with the experiment-runner issue.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from fecosr_jax import evaluation
from fecosr_jax.data import StackedMarkets, leave_one_out, stack_markets, summary, synthetic
from fecosr_jax.data.market import Market
from fecosr_jax.data.sources import markets_from_config
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig, init_params

REPORTED = ("hr@10", "ndcg@10", "mrr@10")


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    return ModelConfig(max_len=config.data.max_len, **config.model.to_dict())


def fed_config(config: ml_collections.ConfigDict) -> FedConfig:
    return FedConfig(seed=config.seed, **config.federated.to_dict())


def prepare_markets(
    config: ml_collections.ConfigDict, *, num_markets_multiple: int = 1
) -> tuple[list[Market], StackedMarkets]:
    """Loads the markets of `config.data`, splits them and stacks them on the market axis."""
    markets = markets_from_config(config.data, synthetic_config(config))
    splits = [
        leave_one_out(m, config.data.max_len, min_interactions=config.data.min_interactions)
        for m in markets
    ]
    return markets, stack_markets(splits, num_markets_multiple=num_markets_multiple)


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON through a temporary file and a rename: never a half-written file."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _floats(x) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def per_market_table(names, metrics: dict[str, np.ndarray], counts: np.ndarray) -> dict:
    """{market: {metric: value}, "mean": user-weighted, "market_mean": unweighted}."""
    out = {
        n: {k: _floats(metrics[k][i]) for k in metrics if k != "count"} for i, n in enumerate(names)
    }
    w = counts / max(counts.sum(), 1)
    out["mean"] = {
        k: _floats(np.sum(metrics[k][: len(names)] * w)) for k in metrics if k != "count"
    }
    out["market_mean"] = {
        k: _floats(np.mean(metrics[k][: len(names)])) for k in metrics if k != "count"
    }
    return out


def results_markdown(results: dict) -> str:
    methods = list(results["methods"])
    names = [k for k in results["methods"][methods[0]] if k not in ("mean", "market_mean")]
    lines = [
        f"# {results['dataset']}: test {', '.join(REPORTED)} ({results['protocol']} ranking)",
        "",
        "| market | " + " | ".join(f"{m} {k}" for m in methods for k in REPORTED) + " |",
        "| --- |" + " ---: |" * (len(methods) * len(REPORTED)),
    ]
    for row in [*names, "mean", "market_mean"]:
        cells = [results["methods"][m][row][k] for m in methods for k in REPORTED]
        lines.append(
            f"| {row} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def dataset_name(config: ml_collections.ConfigDict) -> str:
    if config.data.format == "synthetic":
        return f"synthetic(M={config.synthetic.num_markets}, seed={config.synthetic.seed})"
    return f"{config.data.format}:{os.path.basename(str(config.data.path).rstrip('/'))}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Federated pretraining on the markets of `config`, then per-market evaluation.

    Returns:
      The results dict written to workdir/results.json.
    """
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    devices = jax.devices()
    markets, stacked = prepare_markets(config, num_markets_multiple=len(devices))
    print(summary.format_tables(markets), flush=True)
    names = [m.name for m in markets]
    model_cfg, fed = model_config(config), fed_config(config)
    compiled = fed_round.build_round(model_cfg, fed, len(markets), fed_round.make_mesh(devices))
    data = compiled.put(fed_round.round_data(stacked, fed))
    params = init_params(model_cfg, jax.random.key(config.seed), stacked.semantics.shape[-1])
    state = compiled.init(params)
    print(
        f"\nfederated pretraining ({fed.loss}, {fed.server_optimizer}): "
        f"{config.num_rounds} rounds x {fed.local_steps} local steps, {len(markets)} markets "
        f"on {len(devices)} device(s)",
        flush=True,
    )
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    start = time.perf_counter()
    with open(metrics_path, "w") as log:
        for r in range(config.num_rounds):
            state, metrics = compiled.step(state, data)
            m = jax.device_get(metrics)
            line = {
                "paradigm": f"federated_{fed.loss}",
                "round": r + 1,
                "loss": _floats(m["loss"]),
                "delta_cosine": _floats(m["delta_cosine"]),
                "delta_agreement": _floats(m["delta_agreement"]),
                "market_loss": {n: _floats(m["market_loss"][i]) for i, n in enumerate(names)},
                "market_drift": {n: _floats(m["market_drift"][i]) for i, n in enumerate(names)},
                "seconds": round(time.perf_counter() - start, 3),
            }
            log.write(json.dumps(line) + "\n")
            log.flush()
            if (r + 1) % config.log_every == 0 or r + 1 == config.num_rounds:
                msg = (
                    f"round {r + 1}/{config.num_rounds} loss {line['loss']:.4f} "
                    f"delta cosine {line['delta_cosine']} ({line['seconds']:.1f}s)"
                )
                print(msg, flush=True)
    counts = stacked.num_users[: len(names)].astype(float)
    method = f"federated_{fed.loss}_pretrain"
    got = evaluation.evaluate(
        model_cfg,
        state.params,
        stacked.test_inputs,
        stacked.test_targets,
        stacked.semantics,
        stacked.item_mask,
        batch_size=config.eval_batch_size,
    )
    pop = evaluation.evaluate_popularity(stacked.train, stacked.test_targets, stacked.item_mask)
    results = {
        "dataset": dataset_name(config),
        "protocol": "full",
        "methods": {
            method: per_market_table(names, got, counts),
            "popularity": per_market_table(names, pop, counts),
        },
    }
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    table = results_markdown(results)
    write_text_atomic(os.path.join(workdir, "results.md"), table)
    print("\n" + table, flush=True)
    return results
