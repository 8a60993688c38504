"""launch/sweep.py: the grid, the commands, mean ± std over seeds by hand, and a real sweep
over M whose table repeats each run's results.json."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import test as test_config
from fecosr_jax import errors
from fecosr_jax.report import newcomers as newcomers_lib
from fecosr_jax.report import plots, sweep_results, verdicts
from fecosr_jax.report import results as results_lib
from fecosr_jax.store import metrics_log
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "launch"))
import sweep  # noqa: E402

SWEEP = [sys.executable, str(ROOT / "launch" / "sweep.py")]
TEST_CONFIG = "experiments/configs/test.py"


def test_grid_names_and_commands():
    overrides = ["--config.num_rounds=2"]
    points = sweep.grid({"markets": ["1", "4"], "seeds": ["0", "1"]})
    assert points == [
        {"markets": 1, "seeds": 0},
        {"markets": 1, "seeds": 1},
        {"markets": 4, "seeds": 0},
        {"markets": 4, "seeds": 1},
    ]
    assert [sweep.run_name(p) for p in points] == ["M1_seed0", "M1_seed1", "M4_seed0", "M4_seed1"]
    root = pathlib.Path("w")
    assert sweep.command("c.py", root, [points[3]], overrides) == [
        "python",
        "-m",
        "experiments.main",
        "--config=c.py",
        "--workdir=w/runs/M4_seed1",
        "--config.synthetic.num_markets=4",
        "--config.seed=1",
        "--config.num_rounds=2",
    ]
    # Seeds (and alpha, tau_s) are per-run values: the points of one M share a process.
    assert sweep.processes(points, 0) == [points[:2], points[2:]]
    assert sweep.processes(points, 1) == [[p] for p in points]
    assert sweep.command("c.py", root, points[2:], overrides) == [
        "python",
        "-m",
        "experiments.main",
        "--config=c.py",
        "--workdir=w/runs",
        "--config.synthetic.num_markets=4",
        "--config.num_rounds=2",
        "--run=M4_seed0:seed=0",
        "--run=M4_seed1:seed=1",
    ]
    points = sweep.grid({"seeds": ["0", "1"], "alpha": ["0.1", "0.2", "0.3"]})
    assert [len(p) for p in sweep.processes(points, 4)] == [4, 2]
    assert [sweep.process_name(m, i) for i, m in enumerate(sweep.processes(points, 4), 1)] == [
        "group_p1",
        "group_p2",
    ]
    assert sweep.command("c.py", root, points[:1] * 2, [])[-1] == (
        "--run=alpha0.1_seed0:federated.alpha=0.1,seed=0"
    )


def test_epsilon_turns_privacy_on_at_its_target_and_inf_turns_it_off():
    points = sweep.grid({"epsilon": ["2", "8", "inf"], "seeds": ["0", "1"]})
    assert [sweep.run_name(p) for p in points] == [
        "eps2.0_seed0", "eps2.0_seed1", "eps8.0_seed0", "eps8.0_seed1", "epsinf_seed0",
        "epsinf_seed1",
    ]  # fmt: skip
    # A finite budget is a per-run value (the noise multipliers are data): every finite
    # epsilon and seed in one process, DP on; inf is DP off, another program and process.
    batches = sweep.processes(points, 0)
    assert batches == [points[:4], points[4:]]
    assert [sweep.process_name(b, i) for i, b in enumerate(batches, 1)] == [
        "epsdp_p1", "epsinf_p2"
    ]  # fmt: skip
    on, off = (sweep.command("c.py", pathlib.Path("w"), b, ["--config.seeds=1"]) for b in batches)
    assert on[5:] == [
        "--config.federated.dp.enabled=True",
        "--config.seeds=1",
        "--run=eps2.0_seed0:federated.dp.target_epsilon=2.0,seed=0",
        "--run=eps2.0_seed1:federated.dp.target_epsilon=2.0,seed=1",
        "--run=eps8.0_seed0:federated.dp.target_epsilon=8.0,seed=0",
        "--run=eps8.0_seed1:federated.dp.target_epsilon=8.0,seed=1",
    ]
    assert off[5:] == [
        "--config.federated.dp.enabled=False",
        "--config.seeds=1",
        "--run=epsinf_seed0:seed=0",
        "--run=epsinf_seed1:seed=1",
    ]
    # a point alone (or a process per point) sets its target itself
    alone = sweep.command("c.py", pathlib.Path("w"), [points[2]], [])
    assert alone[4:] == [
        "--workdir=w/runs/eps8.0_seed0",
        "--config.federated.dp.enabled=True",
        "--config.federated.dp.target_epsilon=8.0",
        "--config.seed=0",
    ]
    with pytest.raises(sweep.BadFlag, match=r"--epsilon=1,0: expected values > 0 \(inf: DP off\)"):
        sweep.grid({"epsilon": ["1", "0"]})


def test_a_noiseless_inf_is_the_private_program_at_sigma_zero():
    """--epsilon_inf=noiseless: inf keeps DP's mechanism (sampling, clipping, weighting) with
    sigma 0, so it is a per-run value of the finite budgets' program: one process, the same
    run names, each inf run with target 0 (no calibration) and noise multiplier 0. (Run by
    hand on the test config: the noiseless inf run of such a group wrote the same per-user
    ranks as experiments.main alone with dp.enabled=True and dp.noise_multiplier=0.)"""
    points = sweep.grid({"epsilon": ["2", "inf"], "seeds": ["0", "1"]})
    (batch,) = sweep.processes(points, 0, noiseless=True)
    assert batch == points and sweep.process_name(batch, 1, noiseless=True) == "epsdp_p1"
    cmd = sweep.command("c.py", pathlib.Path("w"), batch, [], noiseless=True)
    assert cmd[5:] == [
        "--config.federated.dp.enabled=True",
        "--run=eps2.0_seed0:federated.dp.target_epsilon=2.0,seed=0",
        "--run=eps2.0_seed1:federated.dp.target_epsilon=2.0,seed=1",
        "--run=epsinf_seed0:federated.dp.target_epsilon=0.0,federated.dp.noise_multiplier=0.0,"
        "seed=0",
        "--run=epsinf_seed1:federated.dp.target_epsilon=0.0,federated.dp.noise_multiplier=0.0,"
        "seed=1",
    ]
    alone = sweep.command("c.py", pathlib.Path("w"), [points[2]], [], noiseless=True)
    assert alone[5:] == [
        "--config.federated.dp.enabled=True",
        "--config.federated.dp.target_epsilon=0.0",
        "--config.federated.dp.noise_multiplier=0.0",
        "--config.seed=0",
    ]
    config = sweep.point_config(test_config.get_config(), points[2], noiseless=True)
    assert config.federated.dp.enabled and config.federated.dp.noise_multiplier == 0.0
    assert config.federated.dp.target_epsilon == 0.0 and config.seed == 0
    # Without the flag inf is the plain round, whatever the finite points are.
    assert not sweep.point_config(test_config.get_config(), points[2]).federated.dp.enabled


def test_an_infinite_epsilon_is_drawn_right_of_the_finite_ones():
    where, ticks = plots.x_positions([8.0, 1.0, math.inf, 2.0, 1.0])
    assert where == {1.0: 1.0, 2.0: 2.0, 8.0: 8.0, math.inf: 16.0}
    assert ticks == {1.0: "1", 2.0: "2", 8.0: "8", 16.0: "∞"}
    assert plots.x_positions([4.0, 1.0]) == ({1.0: 1.0, 4.0: 4.0}, {})


def test_bad_arguments_are_named():
    with pytest.raises(sweep.BadFlag, match="--alpha=0.1,x: expected comma-separated floats"):
        sweep.grid({"alpha": ["0.1", "x"]})
    with pytest.raises(sweep.BadFlag, match="--seeds=,: no values"):
        sweep.grid({"seeds": ["", ""]})


def test_a_sweep_command_line_that_cannot_run_is_one_line_and_exit_2(tmp_path):
    # Through launch/sweep.py's entry point (tests.conftest.refused_by_main): exit 2, one line,
    # no traceback, no workdir.
    from tests.conftest import refused_by_main

    def refused(*flags):
        return refused_by_main(tmp_path / "w", *flags, module="launch.sweep")

    # absl checks the flags and the config's fields before anything runs (errors.parse_flags)
    assert refused("--markets=2", "--config.no_such_field=3").startswith(
        "error: --config.no_such_field:"
    )
    xmrec = f"--config={ROOT}/experiments/configs/xmrec.py"  # the last --config wins
    assert "data.format='xmrec'" in refused("--markets=2", xmrec)
    # --epsilon decides DP for each run; the same field set for every run would overrule it.
    assert refused("--epsilon=1,inf", "--config.federated.dp.enabled=True") == (
        "error: --epsilon sets config.federated.dp.enabled for each run: drop "
        "--config.federated.dp.enabled\n"
    )
    assert refused("--epsilon=1,2", "--epsilon_inf=noiseless") == (
        "error: --epsilon_inf=noiseless: --epsilon has no inf to run without noise\n"
    )
    noise = "--config.federated.dp.noise_multiplier=1"
    assert refused("--epsilon=1,inf", "--epsilon_inf=noiseless", noise).startswith(
        "error: --epsilon sets config.federated.dp.noise_multiplier for each run"
    )
    assert "--collect_only: no finished run" in refused("--markets=1,2", "--collect_only")
    assert "unexpected arguments ['extra']" in refused("--markets=2", "extra")


def test_summary_is_mean_and_std_over_seeds_by_hand():
    def row(seed, ndcg, round_s):
        return {
            "run": f"s{seed}",
            "markets": 2,
            "seeds": seed,
            "status": "done",
            "methods": {"fecosr": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}},
            "round_s": {"federated_s2ce": round_s},
            "delta_cosine": {},
        }

    rows = [row(0, 0.1, 1.0), row(1, 0.3, 3.0), {"run": "s2", "status": "missing"}]
    rows[0]["methods"]["local"] = {"ndcg@10": 0.05, "hr@10": 0.1}
    rows[1]["methods"]["local"] = {"ndcg@10": 0.35, "hr@10": 0.1}
    (summary,) = sweep_results.summarise(rows, ["markets", "seeds"], [("fecosr", "local")])
    # Gaps per seed: 0.05 and -0.05.
    assert summary["gaps"]["fecosr - local"] == [0.0, round(math.sqrt(0.005), 6)]  # rounded
    assert summary["seeds"] == 2
    mean, std = summary["methods"]["fecosr"]["ndcg@10"]
    assert math.isclose(mean, 0.2) and std == round(math.sqrt(0.02), 6)  # ddof 1
    assert summary["round_s"]["federated_s2ce"] == [2.0, round(math.sqrt(2.0), 6)]
    table = sweep_results.markdown([summary], rows, ["markets", "seeds"], "c.py")
    assert "| 2 | 2 | 0.2000 ± 0.1414 | 0.2000 ± 0.2121 | 2.0000 ± 1.4142 |" in table
    assert table.splitlines()[4].endswith("| fecosr - local |")
    # A seed without a value: no mean over the other seeds alone.
    rows[1]["methods"]["local"]["hr@10"] = None
    (summary,) = sweep_results.summarise(rows, ["markets", "seeds"])
    assert summary["methods"]["local"]["hr@10"] is None
    assert "Runs without results: s2" in table


def test_a_grid_point_is_tested_against_local_over_its_seeds():
    # Two seeds of one point: `fecosr` ranks every user first in market a (local: rank 30)
    # and agrees with local in b. Its seed-aware tests pool the two runs' ranks, as a run
    # over seeds would.
    rows = [
        {"run": f"s{seed}", "markets": 2, "seeds": seed, "status": "done", "methods": {},
         "round_s": {}, "delta_cosine": {}}
        for seed in (0, 1)
    ]  # fmt: skip
    hits, misses = np.zeros(30, int), np.resize([0, 30, 5], 30)
    ranks = {f"s{seed}": {"local": {"a": misses + seed, "b": hits},
                          "fecosr": {"a": hits, "b": hits}} for seed in (0, 1)}  # fmt: skip
    (summary,) = sweep_results.summarise(rows, ["markets", "seeds"], ranks=ranks)
    pooled = results_lib.pool_ranks([ranks["s0"], ranks["s1"]])
    assert summary["vs_local"] == verdicts.seed_aware(pooled, ["a", "b"])
    tests = summary["vs_local"]["fecosr"]["markets"]
    assert tests["a"]["verdict"] == "better" and tests["a"]["seeds"] == 2
    assert tests["b"]["verdict"] == "same"
    table = sweep_results.markdown([summary], rows, ["markets", "seeds"], "c.py")
    assert "| markets | seeds | fecosr |" in table and "| 2 | 2 | ▲ 1 / ▼ 0 |" in table
    # Runs of other test users are not paired: no test rather than a wrong one.
    ranks["s1"]["local"]["a"] = ranks["s1"]["local"]["a"][1:]
    (summary,) = sweep_results.summarise(rows, ["markets", "seeds"], ranks=ranks)
    assert summary["vs_local"] == {}


def test_leave_one_market_out_pairs_each_newcomer_with_the_same_market_as_a_member():
    # Two markets a, b; points none (both pretrain), a and b (held out), seeds 0 and 1. The
    # per-user ranks are built so the differences are known by hand: NDCG@10 of rank 0 is 1,
    # of rank 1 is 1/log2(3), of rank 30 is 0.
    users = 20
    hit, second, miss = np.zeros(users, int), np.ones(users, int), np.full(users, 30)
    half = np.resize([0, 30], users)  # every other user a hit: NDCG@10 0.5 on average

    def run(local, fecosr):
        return {"local": local, "fecosr": fecosr}

    ranks, rows = {}, []
    for seed in (0, 1):
        points = {  # value: ({market: local ranks}, {market: fecosr ranks})
            "none": run({"a": miss, "b": miss}, {"a": hit, "b": half}),
            "a": run({"a": miss, "b": miss}, {"a": half, "b": half}),
            "b": run({"a": miss, "b": miss}, {"a": hit, "b": second}),
        }
        for value, r in points.items():
            name = f"new{value}_seed{seed}"
            ranks[name] = r
            rows.append({"run": name, "newcomers": value, "seeds": seed, "status": "done",
                         "methods": {}, "round_s": {}, "delta_cosine": {}})  # fmt: skip
    (point,) = newcomers_lib.compare(rows, ["newcomers", "seeds"], ranks)
    assert point["seeds"] == [0, 1] and list(point["methods"]) == ["fecosr"]
    cells = point["methods"]["fecosr"]["markets"]
    assert list(cells) == ["a", "b"]  # the held-out markets
    second_ndcg = 1 / np.log2(3)
    by_hand = {  # (member gain, newcomer gain, newcomer - member), each over local's 0
        "a": (1.0, 0.5, -0.5),
        "b": (0.5, second_ndcg, second_ndcg - 0.5),
    }
    for market, (member, newcomer, versus) in by_hand.items():
        cell = cells[market]
        assert cell["member"]["diff"] == pytest.approx(member, abs=1e-6)
        assert cell["newcomer"]["diff"] == pytest.approx(newcomer, abs=1e-6)
        assert cell["newcomer_vs_member"]["diff"] == pytest.approx(versus, abs=1e-6)
        assert cell["kept"] == pytest.approx(newcomer / member, abs=1e-6)
    assert cells["a"]["newcomer_vs_member"]["verdict"] == "worse"
    assert cells["b"]["newcomer_vs_member"]["verdict"] == "same"  # +0.13, users disagree
    # The mean row: per seed the plain mean over a and b, tested over the seeds. Both seeds
    # agree exactly here, so every difference is significant with a zero-width interval.
    mean = point["methods"]["fecosr"]["mean"]
    newcomer_mean = (0.5 + second_ndcg) / 2
    assert mean["member"]["diff"] == pytest.approx(0.75, abs=1e-6)  # (1 + 0.5) / 2
    assert mean["newcomer"]["diff"] == pytest.approx(newcomer_mean, abs=1e-6)
    assert mean["newcomer_vs_member"]["diff"] == pytest.approx(newcomer_mean - 0.75, abs=1e-6)
    assert mean["kept"] == pytest.approx(newcomer_mean / 0.75, abs=1e-6)
    assert [mean[k]["verdict"] for k in ("member", "newcomer", "newcomer_vs_member")] == [
        "better", "better", "worse"
    ]  # fmt: skip
    assert mean["member"]["seeds"] == 2 and mean["member"]["family"] == newcomers_lib.MEAN_FAMILY
    table = sweep_results.markdown([], rows, ["newcomers", "seeds"], "c.py", [point])
    row = "| a | +1.0000 [+1.0000, +1.0000] ▲ | +0.5000 [+0.2599, +0.7401] ▲ | -0.5000 [-0.7401, "
    assert row + "-0.2599] ▼ | 50% |" in table, table
    # († on each: a verdict of two seeds does not survive leaving one out)
    assert "| **mean over markets** | +0.7500 [+0.7500, +0.7500] ▲ † | +0.5655 " in table, table
    # Without the whole federation's point nothing is paired.
    alone = [r for r in rows if r["newcomers"] != "none"]
    assert newcomers_lib.compare(alone, ["newcomers", "seeds"], ranks) == []
    # The whole federation run market by market (config.data.finetune_markets): each seed's
    # runs merged give the same point; a market two runs of one seed fine-tuned is refused.
    split = list(alone)
    for seed in (0, 1):
        for market in ("a", "b"):
            name = f"newnone_{market}_seed{seed}"
            whole = ranks[f"newnone_seed{seed}"]
            ranks[name] = {method: {market: r[market]} for method, r in whole.items()}
            split.append({"run": name, "newcomers": "none", "seeds": seed, "status": "done",
                          "methods": {}, "round_s": {}, "delta_cosine": {}})  # fmt: skip
    assert newcomers_lib.compare(split, ["newcomers", "seeds"], ranks) == [point]
    # Before b's member runs exist, only a is paired (a's member tested alone).
    partial = [r for r in split if not r["run"].startswith("newnone_b")]
    (early,) = newcomers_lib.compare(partial, ["newcomers", "seeds"], ranks)
    assert list(early["methods"]["fecosr"]["markets"]) == ["a"]
    assert early["methods"]["fecosr"]["markets"]["a"]["newcomer"]["diff"] == pytest.approx(0.5)
    # A member's gain that is not significant has no share kept: b's member gains 0.5 on
    # seed 0 and nothing on seed 1, a mean of 0.25 the two seeds do not show.
    ranks["newnone_b_seed1"]["fecosr"]["b"] = miss
    (unsure,) = newcomers_lib.compare(split, ["newcomers", "seeds"], ranks)
    b = unsure["methods"]["fecosr"]["markets"]["b"]
    assert b["member"]["diff"] == pytest.approx(0.25) and b["member"]["verdict"] == "same"
    assert b["kept"] is None and unsure["methods"]["fecosr"]["markets"]["a"]["kept"] == 0.5
    # The mean row's member gain is now 0.75 and 0.5 by seed: a t-test with 1 df (a Cauchy
    # distribution) of t = 0.625 / 0.125 = 5, p = 1 - 2 arctan(5) / pi, not significant.
    member = unsure["methods"]["fecosr"]["mean"]["member"]
    assert member["diff"] == pytest.approx(0.625) and member["verdict"] == "same"
    assert member["p_value"] == pytest.approx(1 - 2 * np.arctan(5) / np.pi, rel=1e-6)
    assert unsure["methods"]["fecosr"]["mean"]["kept"] is None
    twice = [*split, {**split[-1], "run": "newnone_seed1"}]
    with pytest.raises(errors.BadInput, match="newnone_a_seed1 and newnone_seed1 both"):
        newcomers_lib.compare(twice, ["newcomers", "seeds"], ranks)


def test_print_only_runs_nothing(tmp_path):
    out = subprocess.run(
        [
            *SWEEP,
            "--markets=1,2",
            f"--config={TEST_CONFIG}",
            f"--workdir={tmp_path}",
            "--print_only",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("--config.synthetic.num_markets=2")
    assert not any(tmp_path.iterdir())


def test_sweep_over_markets_and_alpha_groups_the_alphas_and_collects_every_run(tmp_path):
    out = subprocess.run(
        [
            *SWEEP,
            "--markets=1,2",
            "--alpha=0.2,0.8",
            f"--config={TEST_CONFIG}",
            f"--workdir={tmp_path}",
            "--config.methods=local,fecosr_no_finetune",  # a federated pretraining, cheaply
            "--config.checkpoint.enabled=False",
            "--config.finetune.max_epochs=1",
            "--config.plots=False",  # each run's own plots; the sweep's plot is checked
            "--config.tensorboard=False",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # One process per M, its two alphas as runs of one group.
    assert out.stdout.count("--run=") == 4 and "[2/2]" in out.stdout
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["M1_p1.log", "M2_p2.log"]
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["markets"], r["alpha"], r["status"], r["num_markets"]) for r in rows] == [
        (1, 0.2, "done", 1),
        (1, 0.8, "done", 1),
        (2, 0.2, "done", 2),
        (2, 0.8, "done", 2),
    ]
    for r in rows:
        run = tmp_path / "runs" / r["run"]
        results = json.loads((run / "results.json").read_text())
        assert json.loads((run / "config.json").read_text())["federated"]["alpha"] == r["alpha"]
        for method in ("local", "fecosr_no_finetune"):
            assert r["methods"][method]["ndcg@10"] == results["methods"][method]["mean"]["ndcg@10"]
        assert r["round_s"]["federated_s2ce"] > 0
        training = json.loads((run / "training.json").read_text())
        assert training["pretraining"]["federated_s2ce"]["rounds"] == 3  # the test config's
        assert r["run_s"] == training["seconds"] > 0
        assert (run / "sweep.log").resolve() == (
            tmp_path / "logs" / f"M{r['markets']}_p{r['markets']}.log"
        )
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert {(x["paradigm"], x["stage"]) for x in lines} == {
            ("local", "finetune"),
            ("federated_s2ce", "pretrain"),
        }
    for a, b in (rows[:2], rows[2:]):
        # local does not read alpha: trained once, given to both runs; S²CE does.
        ra, rb = (
            json.loads((tmp_path / "runs" / r["run"] / "results.json").read_text()) for r in (a, b)
        )
        assert ra["methods"]["local"] == rb["methods"]["local"]
        assert ra["methods"]["fecosr_no_finetune"] != rb["methods"]["fecosr_no_finetune"]
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| markets | alpha | seeds |" in (tmp_path / "sweep.md").read_text()
    # M = 1 has one client: no pairwise cosine; M = 2 has one.
    assert "federated_s2ce" not in rows[0]["delta_cosine"]
    assert -1 <= rows[2]["delta_cosine"]["federated_s2ce"] <= 1


def test_a_failed_run_is_reported_and_fails_the_sweep(tmp_path):
    # A learning rate that passes every check and overflows while training: the run fails.
    out = subprocess.run(
        [
            *SWEEP,
            "--markets=2",
            f"--config={TEST_CONFIG}",
            f"--workdir={tmp_path}",
            "--config.methods=fecosr",
            "--config.federated.client_lr=1e30",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "failed (exit 1)" in out.stdout and "Runs without results: M2" in out.stdout
    assert "non-finite loss" in (tmp_path / "runs" / "M2" / "sweep.log").read_text()


def test_sigterm_stops_the_sweep_and_the_run_it_is_in(tmp_path):
    """SIGTERM to a sweep goes on to the process it is running (experiments.main saves its
    step and exits 75), and the sweep starts no further process, writes no table and exits
    75: stopping a sweep leaves no run going on without it."""
    import signal
    import time

    out_path = tmp_path / "out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [
                *SWEEP,
                "--markets=2,3",
                f"--config={TEST_CONFIG}",
                f"--workdir={tmp_path / 'w'}",
                "--config.methods=local",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 120
    while not children.read_text().split():  # the sweep checks every point, then starts one
        assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()
        time.sleep(0.05)
    (child,) = children.read_text().split()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == errors.EXIT_PREEMPTED
    assert not pathlib.Path(f"/proc/{child}").exists()  # stopped, and waited for
    assert "stopped by SIGTERM" in out_path.read_text()
    assert len(list((tmp_path / "w" / "logs").iterdir())) == 1  # M3 never started
    assert not (tmp_path / "w" / "runs" / "M3").exists()
    assert not (tmp_path / "w" / "sweep.json").exists()


def test_a_sweep_passes_sigterm_on_and_waits_out_ctrl_c(tmp_path):
    """run_process: SIGTERM to the sweep goes on to its process; Ctrl-C, which a terminal
    sends to the process itself, is not passed on (twice would stop it at once): the sweep
    waits for the process, and both ask the sweep to stop."""
    import signal
    import threading

    sleeper = [sys.executable, "-c", "import time; time.sleep(1)"]
    main = threading.main_thread().ident  # the thread waiting for the process
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    try:
        with open(tmp_path / "log", "w") as log:
            threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
            assert sweep.run_process(sleeper, log) == (0, True)  # ran to its end
            threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGTERM)).start()
            assert sweep.run_process(sleeper, log) == (-signal.SIGTERM, True)
            assert sweep.run_process(sleeper, log) == (0, False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--markets=2", "--config.methods=no_such_method"],
         "run M2: config.methods: unknown methods"),
        (["--markets=2", "--config.finetune.lr=-1"],
         "run M2: config.finetune.lr=-1.0: expected a positive"),
        (["--markets=2", "--epsilon=1", "--config.federated.batch_size=64",
          "--config.federated.dp.expected_batch_size=60",
          "--config.federated.dp.public=catalogues,weights",
          "--config.federated.client_optimizer=sgd"],
         "run M2_eps1.0: config.federated.dp.expected_batch_size=60: market m0001 has only"),
        (["--alpha=0.2,0.8", "--config.data.format=xmrec", "--config.data.path={data}",
          "--config.data.markets=a"],
         "run alpha0.2: {data}/a_5core.txt:2: field 'date': date '2020-13-45'"),
    ],
    ids=["method", "lr", "dp", "data file"],
)  # fmt: skip
def test_every_point_is_checked_before_the_sweep_writes_anything(tmp_path, flags, named):
    # Through launch/sweep.py's entry point: exit 2, one line naming the run and what to fix,
    # no traceback, no workdir (tests.conftest.refused_by_main).
    from tests.conftest import refused_by_main

    data = tmp_path / "data"
    data.mkdir()
    (data / "a_5core.txt").write_text("u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-13-45\n")
    flags = [f.format(data=data) for f in flags]
    stderr = refused_by_main(tmp_path / "w", *flags, module="launch.sweep")
    assert named.format(data=data) in stderr, stderr


def test_collect_by_hand(tmp_path):
    table = {"mean": {"ndcg@10": 0.2, "hr@10": 0.4}}
    results = {"markets": ["a", "b"], "methods": {"local": table}, "vs_local": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    lines = [
        {"paradigm": "federated_s2ce", "stage": "pretrain", "step": 1, "seconds": 10.0,
         "delta_cosine": 0.2},
        {"paradigm": "federated_s2ce", "stage": "pretrain", "step": 2, "seconds": 10.5,
         "delta_cosine": 0.4},
        {"paradigm": "federated_s2ce", "stage": "pretrain", "step": 3, "seconds": 11.5,
         "delta_cosine": None},
    ] + [
        {"paradigm": "local", "stage": "finetune", "step": e, "seconds": 12.0 + e,
         "market_valid_ndcg@10": {"a": va, "b": vb}}
        for e, (va, vb) in enumerate([(0.1, 0.5), (0.3, 0.4), (0.2, None)], 1)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    row = sweep_results.collect(tmp_path, {"markets": 2})
    assert row["status"] == "done" and row["num_markets"] == 2
    # Best epoch per market (a: 0.3, b: 0.5), then the mean over markets.
    assert row["methods"]["local"] == {"ndcg@10": 0.2, "hr@10": 0.4, "valid_ndcg@10": 0.4}
    assert row["round_s"]["federated_s2ce"] == 0.75  # median of the gaps 0.5 and 1.0
    assert row["delta_cosine"]["federated_s2ce"] == pytest.approx(0.3)
    assert row["run_s"] == 15.0
    assert row["epsilon_spent"] == {}  # DP off
    # A run writes training.json at its end (the same record): collect reads it, not the log.
    (tmp_path / "training.json").write_text(json.dumps(metrics_log.training_record(lines)))
    (tmp_path / "metrics.jsonl").unlink()
    assert sweep_results.collect(tmp_path, {"markets": 2}) == row
    # With DP on: each private pretraining's largest epsilon over markets.
    results["privacy"] = {"federated_s2ce": {"a": {"epsilon": 1.5}, "b": {"epsilon": 2.0}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert sweep_results.collect(tmp_path, {"markets": 2})["epsilon_spent"] == {
        "federated_s2ce": 2.0
    }
