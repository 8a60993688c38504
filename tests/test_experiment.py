"""The runner end to end on the tiny config (the Flax-examples smoke test)."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from experiments import compare
from experiments.configs import test as test_config
from fecosr_jax import progress
from fecosr_jax.report import significance
from fecosr_jax.runs import experiment, groups, inputs, paradigms
from tests.conftest import ROOT

FILES = (
    "config.json",
    "metrics.jsonl",
    "results.json",
    "results.md",
    "ranks.npz",
    "training.json",
    "markets_ndcg10.png",
    "curves.png",
)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, experiment.train_and_evaluate(test_config.get_config(), str(workdir))


def test_every_file_and_every_method(full_run):
    workdir, results = full_run
    for name in FILES:
        assert (workdir / name).is_file(), name
    assert any((workdir / "tensorboard").iterdir())
    assert set(results["methods"]) == {*paradigms.METHODS, "popularity"}
    names = results["markets"]
    for table in results["methods"].values():
        assert set(table) == {*names, "mean", "market_mean"}
        for row in table.values():
            # the metrics' orderings: HR grows with K; MRR <= NDCG <= HR at every K
            assert 0 <= row["hr@5"] <= row["hr@10"] <= row["hr@20"] <= 1
            for k in (5, 10, 20):
                assert row[f"mrr@{k}"] <= row[f"ndcg@{k}"] + 1e-6 <= row[f"hr@{k}"] + 2e-6
    # popularity by hand: a target's rank lies between the items counted strictly more often
    # in training and those plus the ties (broken at random)
    _, _, stacked = inputs.prepare_markets(test_config.get_config())
    for m, name in enumerate(names):
        counts = np.bincount(stacked.train[m].ravel(), minlength=stacked.item_mask.shape[1])
        counts = np.where(stacked.item_mask[m], counts, -1)
        targets = stacked.test_targets[m][stacked.test_targets[m] > 0]
        greater = np.array([(counts > counts[t]).sum() for t in targets])
        ties = np.array([(counts == counts[t]).sum() - 1 for t in targets])
        hr = results["methods"]["popularity"][name]["hr@10"]
        assert np.mean(greater + ties < 10) - 1e-6 <= hr <= np.mean(greater < 10) + 1e-6
    assert results["protocol"] == "full"
    comp = results["vs_local"]["fecosr"]
    assert comp["markets_better"] + comp["markets_worse"] <= len(names)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    stages = {(x["paradigm"], x["stage"]) for x in lines}
    assert ("federated_s2ce", "pretrain") in stages and ("fecosr", "finetune") in stages
    assert "| fecosr |" in (workdir / "results.md").read_text()
    # Each fine-tuned market's kept epoch and the last epoch it trained, as the log shows it.
    for method in paradigms.METHODS:
        log = [x for x in lines if x["paradigm"] == method and x["stage"] == "finetune"]
        for name in names:
            row = results["methods"][method][name]
            if not log:  # not fine-tuned
                assert "stop_epoch" not in row and "best_epoch" not in row
                continue
            trained = [x["step"] for x in log if name not in x["markets_stopped"]]
            assert row["stop_epoch"] == max(trained), (method, name)
            assert 0 <= row["best_epoch"] <= row["stop_epoch"]
    assert "stop_epoch" not in results["methods"]["popularity"]["mean"]
    # training.json: the time per phase the run's last line prints (compiling inside them)
    training = json.loads((workdir / "training.json").read_text())
    phases = training["time"]
    assert set(phases) == {*progress.PHASES, "other", "compiling", "total"}
    seconds = sum(phases[p] for p in progress.PHASES)  # each to 0.1 s
    assert 0 < phases["compiling"] < seconds <= phases["total"] + 0.2
    assert abs(seconds + phases["other"] - phases["total"]) <= 0.3
    # ... and the machine, what a byte-for-byte reproduction needs the same of.
    host, devices = training["host"], jax.devices()
    assert host["jax"] == jax.__version__
    assert host["devices"] == f"{len(devices)} x {devices[0].device_kind}"
    assert host["cpu"] and host["cores"] == os.cpu_count()
    # ... and the code: this checkout's commit (the suite runs in one; metrics_log.code).
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode == 0:
        assert training["code"]["commit"] == head.stdout.decode().strip()
    else:
        assert "version" in training["code"]
    # The S²CE soft labels' profile per market, at the run's tau_s, in results and results.md.
    soft = results["soft_labels"]
    assert soft["temperature"] == test_config.get_config().federated.temperature
    assert list(soft["markets"]) == names
    assert all(0 < p["target_mass"] <= 1 for p in soft["markets"].values())
    assert "S²CE soft labels at tau_s" in (workdir / "results.md").read_text()


def test_results_are_a_pure_function_of_config_and_seed(full_run, tmp_path):
    """A second run of some methods, in another order and without the others, reproduces
    their numbers exactly (federated, one-to-one and local pipelines, paired tests included)."""
    _, full = full_run
    config = test_config.get_config()
    config.methods = "transfer_id,fecosr,local"
    config.plots = False
    config.tensorboard = False
    again = experiment.train_and_evaluate(config, str(tmp_path))
    for method in ("transfer_id", "fecosr", "local", "popularity"):
        assert again["methods"][method] == full["methods"][method], method
    for method in ("transfer_id", "fecosr", "popularity"):
        assert again["vs_local"][method] == full["vs_local"][method], method


def test_uses_s2ce_names_the_s2ce_pretrainings():
    s2ce = [m for m in paradigms.METHODS if paradigms.uses_s2ce(m)]
    assert s2ce == ["transfer", "centralized", "fecosr", "fecosr_no_adapt", "fecosr_no_finetune"]
    assert paradigms.uses_s2ce("transfer@de") and not paradigms.uses_s2ce("transfer_id@de")


def test_text_methods_refuse_without_semantics(tmp_path):
    config = test_config.get_config()
    config.data.semantics = "none"
    config.methods = "local,fecosr"
    config.plots = False
    results = experiment.train_and_evaluate(config, str(tmp_path))
    assert "needs item semantic vectors" in results["skipped"]["fecosr"]
    assert set(results["methods"]) == {"local", "popularity"}
    assert results["soft_labels"] == {}


def test_unknown_method_names_the_field():
    with pytest.raises(ValueError, match="config.methods: unknown methods \\['fedsgd'\\]"):
        paradigms.parse_methods("local,fedsgd")


def test_methods_name_their_source_market():
    assert paradigms.split_method("transfer_id@de") == ("transfer_id", "de")
    assert paradigms.parse_methods("local,transfer_id@each") == ["local", "transfer_id@each"]
    assert paradigms.expand_sources(["transfer_id@each", "transfer@b"], ["a", "b"]) == [
        "transfer_id@a",
        "transfer_id@b",
        "transfer@b",
    ]
    with pytest.raises(ValueError, match="config.methods: fecosr@a: only transfer and"):
        paradigms.parse_methods("fecosr@a")
    with pytest.raises(ValueError, match="config.methods: transfer_id@zz: 'zz' is not a market"):
        paradigms.expand_sources(["transfer_id@zz"], ["a", "b"])
    # results.json's transfer_source (and results.md's line naming it) is the default source,
    # for the one-to-one methods that name none; METHOD@m says its own
    assert paradigms.takes_the_default_source(["local", "transfer_id"])
    assert not paradigms.takes_the_default_source(["local", "transfer_id@a", "transfer@b"])
    assert not paradigms.takes_the_default_source(["fecosr"])


def test_one_to_one_id_transfer_pretrains_on_each_source_alone(tmp_path):
    config = test_config.get_config()
    config.data.semantics = "none"
    config.methods = "local,transfer_id,transfer_id@each"
    config.finetune.max_epochs = 1
    config.plots = config.tensorboard = False
    results = experiment.train_and_evaluate(config, str(tmp_path))
    names = results["markets"]
    source = results["transfer_source"]
    assert set(results["methods"]) == {
        "local",
        "transfer_id",
        *(f"transfer_id@{m}" for m in names),
        "popularity",
    }
    # The run's own source and the same source named in the method share one pretraining.
    assert results["methods"]["transfer_id"] == results["methods"][f"transfer_id@{source}"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    pretrained = {x["paradigm"]: x for x in lines if x["stage"] == "pretrain"}
    assert set(pretrained) == {
        "source_id_ce" if m == source else f"source_id_ce@{m}" for m in names
    }
    for m in names:  # each pretraining saw its source market only
        key = "source_id_ce" if m == source else f"source_id_ce@{m}"
        assert list(pretrained[key]["market_loss"]) == [m]
    tables = [results["methods"][f"transfer_id@{m}"]["mean"]["ndcg@10"] for m in names]
    assert len(set(tables)) == len(names)  # the source changes the outcome
    md = (tmp_path / "results.md").read_text()
    assert f"pretrain on the source market `{source}`" in md
    assert "One-to-one `transfer_id` from each source" in md  # the source x target matrix


def test_per_user_ranks_reproduce_the_tables_and_feed_the_paired_tests(full_run):
    workdir, results = full_run
    ranks = json.loads((workdir / "checkpoints" / "progress.json").read_text())["ranks"]
    assert set(ranks) == set(results["methods"])
    for method, table in results["methods"].items():
        for market in results["markets"]:
            per_user = significance.per_user(np.asarray(ranks[method][market]), "ndcg@10")
            assert per_user.mean() == pytest.approx(table[market]["ndcg@10"], abs=2e-6)
    for method, comp in results["vs_local"].items():
        # One seed: the seed-aware test is the paired test over users, about one model.
        tests = comp["seed_aware"]["markets"]
        assert comp["trained_models"]["markets"].keys() == tests.keys() == set(results["markets"])
        assert comp["seed_aware"]["correction"] == "benjamini-hochberg"
        assert comp["seed_aware"]["test"] == significance.ONE_MODEL
        family = significance.correct(
            {
                market: significance.paired_test(
                    significance.per_user(np.asarray(ranks[method][market])),
                    significance.per_user(np.asarray(ranks["local"][market])),
                )
                for market in tests
            }
        )
        for market, t in tests.items():
            expected = family[market]
            assert t["verdict"] == expected["verdict"] and t["users"] == expected["users"]
            if expected["p_adjusted"] is not None:
                assert t["p_adjusted"] == pytest.approx(expected["p_adjusted"], abs=1e-6)
        verdicts = [t["verdict"] for t in tests.values()]
        assert comp["markets_significantly_better"] == verdicts.count("better")
        assert comp["markets_significantly_worse"] == verdicts.count("worse")


def test_compare_any_two_methods_equals_the_test_against_local(full_run, tmp_path):
    """experiments.compare on A:local reproduces results.json's test of A against local; B:A
    mirrors A:B; bad pairs and a run without kept ranks are named."""
    workdir, results = full_run
    text = compare.compare(str(workdir), "fecosr:local,transfer:local,fecosr:fedavg_ce")
    pairs = json.loads((workdir / "pairs.json").read_text())["pairs"]
    assert [(p["method"], p["reference"]) for p in pairs] == [
        ("fecosr", "local"),
        ("transfer", "local"),
        ("fecosr", "fedavg_ce"),
    ]
    for pair in pairs[:2]:
        test = {k: v for k, v in pair.items() if k not in ("method", "reference")}
        assert test == results["vs_local"][pair["method"]]
    mirrored = compare.compare(str(workdir), "fedavg_ce:fecosr")
    (back,) = json.loads((workdir / "pairs.json").read_text())["pairs"]
    flip = {"better": "worse", "worse": "better", "same": "same"}
    for market, t in pairs[2]["seed_aware"]["markets"].items():
        u = back["seed_aware"]["markets"][market]
        assert u["p_value"] == t["p_value"] and u["verdict"] == flip[t["verdict"]]
        assert u["diff"] == pytest.approx(-t["diff"], abs=1e-6)
    assert "| fedavg_ce | fecosr |" in mirrored and (workdir / "pairs.md").read_text() == mirrored
    assert "| fecosr | local |" in text
    with pytest.raises(
        ValueError, match="--pairs=fecosr:nope: no method 'nope' in this run; it has .*fecosr, "
    ):
        compare.compare(str(workdir), "fecosr:nope")
    for bad in ("fecosr", "fecosr:fecosr", "fecosr:local:transfer"):
        with pytest.raises(ValueError, match="--pairs: expected"):
            compare.compare(str(workdir), bad)
    (tmp_path / "results.json").write_text((workdir / "results.json").read_text())
    with pytest.raises(ValueError, match=r"ranks\.npz: missing \(and no .*progress\.json\)"):
        compare.compare(str(tmp_path), "fecosr:local")
    # The ranks live beside results.json: compare needs no checkpoints.
    (tmp_path / "ranks.npz").write_bytes((workdir / "ranks.npz").read_bytes())
    assert compare.compare(str(tmp_path), "fecosr:local") == compare.compare(
        str(workdir), "fecosr:local"
    )


def test_several_seeds_report_mean_std_and_resume(tmp_path):
    config = test_config.get_config()
    config.methods = "local"
    config.seeds = "3"
    config.seed = 3
    config.finetune.max_epochs = 1
    config.plots = False
    config.tensorboard = False
    results = experiment.train_and_evaluate(config, str(tmp_path))
    assert results["seeds"] == [3, 4, 5]
    per_seed = [
        json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (3, 4, 5)
    ]
    for market in [*results["markets"], "mean"]:
        values = [r["methods"]["local"][market]["ndcg@10"] for r in per_seed]
        assert results["methods"]["local"][market]["ndcg@10"] == pytest.approx(
            np.mean(values), abs=1e-6
        )
        assert results["std"]["local"][market]["ndcg@10"] == pytest.approx(
            np.std(values, ddof=1), abs=1e-6
        )
    assert per_seed[0] != per_seed[1]  # the seed reaches the model, not only the name
    md = (tmp_path / "results.md").read_text()
    assert "mean ± std over seeds 3, 4, 5" in md
    # Popularity does not depend on the seed; its tests against local count the 3 seeds: in
    # results.json each market's has its test's name, a 95% interval and `robust`.
    assert results["std"]["popularity"]["mean"]["ndcg@10"] == 0.0
    aware = results["vs_local"]["popularity"]["seed_aware"]
    assert aware["test"] == significance.SEED_AWARE and set(aware["markets"]) == set(
        results["markets"]
    )
    for t in aware["markets"].values():
        assert t["seeds"] == 3 and t["ci"][0] <= t["diff"] <= t["ci"][1]
        assert isinstance(t["robust"], bool)
    assert "▲ / ▼: significantly better / worse than `local` in that market over 3 seeds" in md
    # A finished multi-seed run only reports, with the same results.
    assert experiment.train_and_evaluate(config, str(tmp_path)) == results
    # Paired comparisons of any two methods pool the seeds' ranks as the runner does.
    compare.compare(str(tmp_path), "popularity:local")
    (pair,) = json.loads((tmp_path / "pairs.json").read_text())["pairs"]
    assert pair["seed_aware"] == aware


@pytest.mark.parametrize(
    ("seeds", "expected"), [("3", [5, 6, 7]), ("0,4,7", [0, 4, 7]), ("7,", [7]), ("1", [5])]
)
def test_seeds_are_a_count_or_a_list(seeds, expected):
    config = test_config.get_config()
    config.seed = 5
    config.seeds = seeds
    assert groups.parse_seeds(config) == expected


@pytest.mark.parametrize("seeds", ["0", "x", "1,1", ","])
def test_bad_seeds_name_the_field(seeds):
    config = test_config.get_config()
    config.seeds = seeds
    with pytest.raises(ValueError, match="config.seeds="):
        groups.parse_seeds(config)


def test_bad_runs_per_step_names_the_field_before_anything_is_written(tmp_path):
    config = test_config.get_config()
    config.runs_per_step = -1  # (a non-integer is refused by the ConfigDict's type)
    with pytest.raises(ValueError, match="config.runs_per_step="):
        experiment.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_a_new_method_is_one_row_of_the_table(tmp_path, monkeypatch):
    """Methods are data: a pooled S²CE pretraining with plain fine-tuning, added to SPECS
    alone, runs end to end and is reported like any other."""
    monkeypatch.setitem(
        paradigms.SPECS, "pooled_plain", paradigms.MethodSpec("central_s2ce", "plain", True)
    )
    config = test_config.get_config()
    config.methods = "local,pooled_plain"
    config.num_rounds, config.finetune.max_epochs = 1, 1
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    results = experiment.train_and_evaluate(config, str(tmp_path))
    table = results["methods"]["pooled_plain"]
    assert set(table) == {*results["markets"], "mean", "market_mean"}
    assert 0 < table["mean"]["ndcg@10"] <= table["mean"]["hr@10"] <= 1
    assert "pooled_plain" in results["vs_local"]
    lines = (tmp_path / "metrics.jsonl").read_text()
    assert '"paradigm": "central_s2ce"' in lines and '"paradigm": "pooled_plain"' in lines
