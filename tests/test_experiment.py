"""The runner end to end on the tiny config (the Flax-examples smoke test)."""

import json

import pytest

from experiments.configs import test as test_config
from fecosr_jax import experiment, paradigms

FILES = (
    "config.json",
    "metrics.jsonl",
    "results.json",
    "results.md",
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
        for k in (5, 10, 20):
            assert {f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"} <= set(table["mean"])
    assert results["protocol"] == "full"
    comp = results["vs_local"]["fecosr"]
    assert comp["markets_better"] + comp["markets_worse"] <= len(names)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    stages = {(x["paradigm"], x["stage"]) for x in lines}
    assert ("federated_s2ce", "pretrain") in stages and ("fecosr", "finetune") in stages
    assert "| fecosr |" in (workdir / "results.md").read_text()


def test_results_are_a_pure_function_of_config_and_seed(full_run, tmp_path):
    workdir, _ = full_run
    config = test_config.get_config()
    config.plots = False
    config.tensorboard = False
    experiment.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "results.json").read_bytes() == (workdir / "results.json").read_bytes()


def test_text_methods_refuse_without_semantics(tmp_path):
    config = test_config.get_config()
    config.data.semantics = "none"
    config.methods = "local,fecosr"
    config.plots = False
    results = experiment.train_and_evaluate(config, str(tmp_path))
    assert "needs item semantic vectors" in results["skipped"]["fecosr"]
    assert set(results["methods"]) == {"local", "popularity"}


def test_unknown_method_names_the_field():
    with pytest.raises(ValueError, match="config.methods: unknown methods \\['fedsgd'\\]"):
        paradigms.parse_methods("local,fedsgd")
