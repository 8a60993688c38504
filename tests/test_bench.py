"""The benchmarks: the analytic FLOP count against XLA's, the PyTorch model against the JAX
one, and the round and S²CE benchmarks end to end on tiny settings (JSON, memory budget)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import common
from experiments.configs import test as test_config
from fecosr_jax.model import SequenceModel, init_params, scores
from tests.conftest import ROOT


# The configs of docs/benchmarks.md's figures (in "tiny", elementwise work is a third of it).
@pytest.mark.parametrize("name", ["reference", "small"])
def test_analytic_forward_flops_match_xla_cost_analysis(name):
    c = common.CONFIGS[name]
    model = c.model_config()
    params = init_params(model, jax.random.key(0), c.semantic_dim)
    data = common.market_arrays(c, 1)
    inputs = jnp.asarray(data["train"][0, : c.batch_size, :-1])
    semantics, mask = jnp.asarray(data["semantics"][0]), jnp.asarray(data["item_mask"][0])

    def forward(p):
        hidden, items = SequenceModel(model).apply({"params": p}, inputs, semantics)
        return scores(model, hidden, items, mask)

    cost = jax.jit(forward).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = common.forward_flops(c)
    # XLA also counts the elementwise work (softmax, norms, GELU): a few percent more.
    assert analytic <= cost["flops"] <= 1.1 * analytic


def test_torch_reference_is_the_same_model(monkeypatch):
    """The benchmark's "vs torch" compares one model: with the JAX parameters copied across,
    the PyTorch reference gives the JAX model's scores (check_same_model, which the torch
    backend runs first), and a reference that differs only in LayerNorm's epsilon fails it."""
    pytest.importorskip("torch", reason="the [bench] extra (torch) is not installed")
    from torch import nn

    from experiments.bench import round as bench_round
    from experiments.bench import torch_reference

    for name in ("tiny", "small"):  # 1 and 2 blocks; `reference` is checked when measured
        c = common.CONFIGS[name]
        n, error = bench_round.check_same_model(c)
        params = init_params(c.model_config(), jax.random.key(0), c.semantic_dim)
        assert n == sum(x.size for x in jax.tree.leaves(params))
        assert error < 1e-5, name  # float32 rounding: ~4e-7 measured
    monkeypatch.setattr(torch_reference, "layer_norm", nn.LayerNorm)  # PyTorch's 1e-5
    with pytest.raises(AssertionError, match="same parameters, other scores"):
        bench_round.check_same_model(common.CONFIGS["tiny"])


def test_round_benchmark_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.round",
        "--config=tiny",  # compiles fastest; its figures mean nothing
        "--markets=2",
        "--backends=vmap,loop",
        "--dp=off,on",
        "--seconds=0",
        f"--json={out}",
    ]
    env = {**os.environ, "XLA_FLAGS": test_config.FAST_COMPILE}  # one CPU device
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-5].startswith("| backend | M | R | DP | client-steps/s")  # the table comes last
    assert lines[-1].startswith("| loop | 2 | 1 | off |")
    assert "No GPU on this machine" in done.stdout
    results = json.loads(out.read_text())
    assert results["matmul_gflops"] > 0
    assert [(r["backend"], r["markets"], r["dp"]) for r in results["runs"]] == [
        ("vmap", 2, False),
        ("vmap", 2, True),
        ("loop", 2, False),
    ]
    c = common.CONFIGS["tiny"]
    assert results["step_gflop"] == pytest.approx(common.step_flops(c) / 1e9)
    for r in results["runs"]:
        assert {"client_steps_per_s", "achieved_gflops", "compile_s"} <= set(r)
        assert r["client_steps_per_s"] > 0 and r["runs"] == 1
        # the derived figures follow from the timed round: M x K client steps per round
        steps = r["markets"] * c.local_steps / r["round_s"]
        assert r["client_steps_per_s"] == pytest.approx(steps)
        assert r["sequences_per_s"] == pytest.approx(steps * c.batch_size)
        assert r["achieved_gflops"] == pytest.approx(steps * results["step_gflop"])
        assert r["compile_s"] == pytest.approx(max(0.0, r["first_round_s"] - r["round_s"]))
        if r["backend"] == "vmap":
            assert r["traces"] == 1  # no retrace after round 1
    # the printed table shows the JSON's numbers, and DP's cost against the same round without
    plain, private, loop2 = results["runs"]
    assert f"| loop | 2 | 1 | off | {loop2['client_steps_per_s']:.1f} |" in lines[-1]
    ratio = private["client_steps_per_s"] / plain["client_steps_per_s"]
    assert lines[-2].startswith("| vmap | 2 | 1 | on |") and lines[-2].endswith(f"| {ratio:.2f}x |")


def test_s2ce_benchmark_measures_both_and_skips_what_does_not_fit(tmp_path):
    out = tmp_path / "s2ce.json"
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.s2ce",
        "--items=1000,20000",
        "--positions=64",
        "--hidden=16",
        "--semantic_dim=8",
        "--block_size=1024",
        "--seconds=0",
        "--budget_gib=0.012",  # 12 MiB: dense at 20k items needs ~23, blockwise ~7
        f"--json={out}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("| 20,000 | 64 |")
    runs = {(r["impl"], r["items"]): r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {(i, n) for i in ("dense", "blockwise") for n in (1000, 20000)}
    assert runs[("dense", 20000)]["seconds"] is None  # over the budget: compiled, not run
    assert runs[("blockwise", 20000)]["seconds"] > 0
    # Dense holds [P, N] logits and soft labels; blockwise one [P, block] block at a time.
    assert runs[("blockwise", 20000)]["peak_bytes"] < runs[("dense", 20000)]["peak_bytes"] / 2


def test_gpu_script_runs_each_default_section_and_names_an_unknown_one(tmp_path):
    script = ROOT / "experiments" / "bench" / "gpu.sh"
    text = script.read_text()
    defaults = text.split("\nknown=(", 1)[1].split(")", 1)[0].split()
    assert defaults[:2] == ["env", "tests"] and "s2ce" in defaults
    for name in defaults:  # each default section has its case branch
        assert f"\n    {name})\n" in text
    done = subprocess.run(
        ["bash", str(script), str(tmp_path), "nope"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown section: nope" in done.stderr and "reference_bf16" in done.stderr


def test_main_job_steps_from_the_log_and_its_table():
    """metrics_log.steps groups the log's lines into the run's steps (methods that trained
    together log each round or epoch in turn), and experiments.bench.main_job's table's
    'before' is the gap between steps, worked out by hand."""
    from experiments.tables import bench as bench_tables
    from fecosr_jax.store import metrics_log

    def line(paradigm, stage, step, seconds, active=None):
        x = {"paradigm": paradigm, "stage": stage, "step": step, "seconds": seconds}
        return x | ({"markets_active": active} if active is not None else {})

    lines = [
        line("local", "finetune", 1, 10.0, 2),
        line("local", "finetune", 2, 12.0, 1),
        line("source", "pretrain", 1, 20.0),
        line("source", "pretrain", 2, 21.0),
        line("fed_a", "pretrain", 1, 30.0),  # two runs of one round, logged in turn
        line("fed_b", "pretrain", 1, 30.01),
        line("fed_a", "pretrain", 2, 33.0),
        line("fed_b", "pretrain", 2, 33.01),
        line("fecosr", "finetune", 1, 40.0, 2),
    ]
    steps = metrics_log.steps(lines)
    assert [(s["stage"], s["methods"], s["steps"], s["first"], s["last"]) for s in steps] == [
        ("finetune", ["local"], 2, 10.0, 12.0),
        ("pretrain", ["source"], 2, 20.0, 21.0),
        ("pretrain", ["fed_a", "fed_b"], 2, 30.0, 33.01),
        ("finetune", ["fecosr"], 1, 40.0, 40.0),
    ]
    assert steps[0]["active"] == 3
    time = {"loading": 1.0, "pretraining": 20.0, "fine-tuning": 19.0, "compiling": 9.0}
    text = bench_tables.main_job_table(
        {"steps": steps, "time": time | {"total": 41.0}, "wall_s": 125}
    )
    rows = text.splitlines()
    assert rows[2] == "| finetune | local | 2 | 3 | 10.0 | 2.0 |"
    assert rows[4] == "| pretrain | fed_a, fed_b | 2 | - | 9.0 | 3.0 |"  # 30 - 21, 33.01 - 30
    assert "loading 1.0, pretraining 20.0, fine-tuning 19.0; compiling 9.0 of it" in rows[6]
    assert rows[7].endswith("| **125** (2 min 5 s) |")


def test_accountant_benchmark_is_the_runs_accountant_at_its_discretisation():
    """experiments.bench.accountant's epsilon at fecosr_jax's discretisation is the one a run
    accounts with; truncation costs privacy (a larger epsilon than plain Poisson); a finer
    discretisation is never above the coarser (PLD's pessimistic bound)."""
    pytest.importorskip("jax_privacy")
    from experiments.bench import accountant
    from experiments.tables import bench as bench_tables
    from fecosr_jax.federated import accounting

    coarse = accountant.measure(accounting.PLD_INTERVAL, 40, 8, 8)
    assert coarse["epsilon_truncated"] == accounting.cached_epsilon(1.0, 40, 4, 8, 1 / 400, 8)
    assert coarse["epsilon_truncated"] > coarse["epsilon_plain"]
    fine = accountant.measure(1e-3, 40, 8, 8)
    assert fine["epsilon_truncated"] <= coarse["epsilon_truncated"]
    text = bench_tables.accountant_table({"rows": [coarse]})
    assert text.splitlines()[2].startswith("| 1e-2 | 40, 8, 8 | 1.8477 |")


def test_the_soak_names_where_each_kill_landed_and_checks_each_step_once(tmp_path):
    from experiments.bench import soak

    header = "===== 3 seeds\n| market | users |\n| m0000 | 12 |\n"
    group = "== [2/5] transfer, fecosr (seed 0)\n"
    pretrain = "[ 10.6s] seed 0 federated_s2ce pretrain 2/3: loss 4.69\n"
    epoch = "[ 23.9s] seed 0 fecosr finetune {}/2: valid_ndcg@10 0.09\n"
    assert soak.phase("") == soak.phase(header) == "start-up"  # data tables before any group
    assert soak.phase(header + group) == "between groups"
    assert soak.phase(header + group + pretrain) == "pretraining"
    assert soak.phase(header + group + pretrain + epoch.format(1)) == "fine-tuning"
    assert soak.phase(header + group + epoch.format(2)) == "evaluation"  # the last epoch done
    assert soak.phase(header + group + epoch.format(2) + "| method | gain |\n") == "writing"
    # A resumed phase that logged a step twice, or lost one, is found.
    for s in range(2):
        (tmp_path / f"seed_{s}").mkdir()
    lines = [{"stage": "pretrain", "paradigm": "p", "curve": "loss", "step": k} for k in (1, 2)]

    def write(rows):
        for s in range(2):
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (tmp_path / f"seed_{s}" / "metrics.jsonl").write_text(text)

    write(lines)
    want = soak.logged_steps(tmp_path, 2)
    assert soak.steps_once(tmp_path, want)
    write([*lines, lines[1]])
    assert not soak.steps_once(tmp_path, want)
    write(lines[:1])
    assert not soak.steps_once(tmp_path, want)
