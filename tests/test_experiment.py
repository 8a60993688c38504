"""The runner end to end on the tiny config (the Flax-examples smoke test)."""

import json

from experiments.configs import test as test_config
from fecosr_jax import experiment


def test_train_and_evaluate_writes_outputs_deterministically(tmp_path):
    config = test_config.get_config()
    config.num_rounds = 2
    a = experiment.train_and_evaluate(config, str(tmp_path / "a"))
    b = experiment.train_and_evaluate(config, str(tmp_path / "b"))
    for name in ("config.json", "metrics.jsonl", "results.json", "results.md"):
        assert (tmp_path / "a" / name).is_file()
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert (tmp_path / "a" / "results.json").read_bytes() == (
        tmp_path / "b" / "results.json"
    ).read_bytes()
    assert a == b
    methods = a["methods"]
    assert set(methods) == {"federated_s2ce_pretrain", "popularity"}
    assert set(methods["popularity"]) == {"m0000", "m0001", "m0002", "mean", "market_mean"}
    assert {"hr@5", "ndcg@10", "mrr@20"} <= set(methods["popularity"]["mean"])
