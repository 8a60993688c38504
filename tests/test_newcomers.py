"""Newcomer markets (config.data.newcomers): markets that take no part in pretraining,
then fine-tune from the model the others pretrained and are evaluated like every market; and
pretrained models as artifacts (WORKDIR/pretrained/<key>/, config.pretrained).

Whether a newcomer's data reach pretraining is checked by the data, not by names: changing
only the newcomer's interactions leaves the pretrained parameters bit for bit the same, while
the same change to a market that pretrains changes them."""

import json
import shutil

import jax
import numpy as np
import pytest

from experiments.configs import test as test_config
from fecosr_jax.report import results as results_lib
from fecosr_jax.runs import experiment
from fecosr_jax.store import pretrained as pretrained_lib
from fecosr_jax.store import resume
from tests.conftest import final_state, refused_by_main

PRETRAIN = "pretrain_federated_s2ce"
PRETRAIN_ID = "pretrain_federated_id_ce"


def write_markets(folder, changed: bool = False):
    """Three tiny XMRec markets: a and b share their 10 items; c rates 6 of them and 6 items
    of its own (c-i..., unseen in a and b). `changed` moves two of c's ratings to other
    items."""
    folder.mkdir(exist_ok=True)
    for market, items in (("a", 10), ("b", 10), ("c", 12)):
        rows = [
            f"{market}{u} {'c-' if market == 'c' and (u + 2 * k) % items % 2 else ''}"
            f"i{(u + 2 * k) % items} 5.0 2020-01-{k + 1:02d}"
            for u in range(10)
            for k in range(6)
        ]
        if changed and market == "c":
            rows[1] = rows[1].replace(" c-i", " c-i1", 1)
            rows[20] = rows[20].replace(" c-i", " c-i1", 1)
        (folder / f"ratings_{market}_x.txt").write_text("\n".join(rows) + "\n")


def config_for(data, newcomers: str, methods: str = "fecosr,fedavg_id"):
    config = test_config.get_config()
    config.update_from_flattened_dict(
        {"data.format": "xmrec", "data.path": str(data), "data.markets": "a,b,c",
         "data.semantics": "random", "data.random_dim": 8,
         "data.newcomers": newcomers, "methods": methods,
         "finetune.max_epochs": 1, "plots": False, "tensorboard": False}
    )  # fmt: skip
    return config


def pretrained(tmp_path, name: str, newcomers: str, changed: bool, methods="fecosr,fedavg_id"):
    """(the pretrained parameters' leaves, text model's then item-ID model's, results.json)
    of a run of `methods` (fecosr and fedavg_id, or one of them) on the three markets."""
    data = tmp_path / f"data_{name}"
    write_markets(data, changed)
    workdir = tmp_path / name
    experiment.train_and_evaluate(config_for(data, newcomers, methods), str(workdir))
    phases = [p for m, p in (("fecosr", PRETRAIN), ("fedavg_id", PRETRAIN_ID)) if m in methods]
    leaves = [x for phase in phases for x in final_state(workdir, phase)[1]]
    return leaves, json.loads((workdir / "results.json").read_text())


def test_a_newcomers_data_never_reach_pretraining(tmp_path):
    same, results = pretrained(tmp_path, "c_new", "c", changed=False)
    other, changed_results = pretrained(tmp_path, "c_new_changed", "c", changed=True)
    assert len(same) == len(other)
    assert all(np.array_equal(x, y) for x, y in zip(same, other, strict=True))
    # The newcomer, 6 of whose items a and b never saw, fine-tunes and is evaluated with
    # both models: its validation curve is logged, and its test metrics differ with its data.
    assert results["newcomers"] == ["c"]
    for method in ("fecosr", "fedavg_id"):
        c = results["methods"][method]["c"]
        assert np.isfinite(c["ndcg@10"]) and c["stop_epoch"] == 1  # it trained its epoch
        assert c != changed_results["methods"][method]["c"]
    # The item-ID model pretrained over a and b's 10 items only, each once.
    export = pretrained_lib.read(str(tmp_path / "c_new" / "pretrained" / "federated_id_ce"))
    assert export.meta["items"]["vocabulary"] == [f"i{i}" for i in range(10)]
    assert export.meta["model"]["num_item_ids"] == 11
    lines = (tmp_path / "c_new" / "metrics.jsonl").read_text().splitlines()
    assert any("c" in x.get("market_valid_ndcg@10", {}) for x in map(json.loads, lines))
    pretraining = [x for x in map(json.loads, lines) if x["stage"] == "pretrain"]
    assert pretraining and all(set(x["market_loss"]) == {"a", "b"} for x in pretraining)
    # The control: when c pretrains, the same change to its data changes the model (the
    # text model's, whose shapes do not depend on the catalogues).
    member, results = pretrained(tmp_path, "c_member", "", changed=False, methods="fecosr")
    changed, _ = pretrained(tmp_path, "c_member_changed", "", changed=True, methods="fecosr")
    assert not all(np.array_equal(x, y) for x, y in zip(member, changed, strict=True))
    assert "newcomers" not in results


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--config.data.newcomers=m0009"],
         "config.data.newcomers='m0009': m0009 is not a market of this data"),
        (["--config.data.newcomers=m0002,m0002"], "m0002 twice"),
        (["--config.data.newcomers=m0002,m0001,m0000"], "every market, so no market would"),
        (["--config.data.newcomers=m0002", "--config.transfer_source=m0002"],
         "config.transfer_source='m0002' does not take part in pretraining"),
        (["--config.data.newcomers=m0002", "--config.methods=transfer@m0002"],
         "transfer@m0002: 'm0002' does not take part in pretraining"),
        (["--config.data.newcomers=m0002", "--config.federated.clients_per_round=3"],
         "clients_per_round=3: this data has 2 markets that pretrain"),
        (["--config.data.finetune_markets=m0001,m0009"],
         "config.data.finetune_markets='m0001,m0009': m0009 is not a market of this data"),
        (["--config.data.finetune_markets=m0001,m0001"], "m0001 twice"),
    ],
    ids=["unknown", "twice", "all", "source", "method source", "clients", "fine-tune unknown",
         "fine-tune twice"],
)  # fmt: skip
def test_newcomers_that_cannot_be_are_refused_in_one_line(tmp_path, flags, named):
    assert named in refused_by_main(tmp_path / "w", *flags)


def test_items_no_pretraining_market_had_get_rows_like_the_models_own_init():
    from fecosr_jax import keys
    from fecosr_jax.model import ModelConfig
    from fecosr_jax.runs import paradigms

    model = ModelConfig(hidden=4, use_text=False, num_item_ids=3)
    params = {"item_ids": {"embedding": np.ones((3, 4), np.float32)}, "other": np.zeros(2)}
    grown = paradigms.extend_item_ids(params, model, 5, seed=7)
    table = np.asarray(grown["item_ids"]["embedding"])
    assert table.shape == (5, 4) and (table[:3] == 1).all()  # the pretrained rows as they were
    by_hand = 0.5 * np.asarray(jax.random.normal(keys.derive(7, keys.NEW_ITEMS), (2, 4)))
    np.testing.assert_array_equal(table[3:], by_hand)  # std hidden ** -0.5 = 0.5
    assert grown["other"] is params["other"]
    assert paradigms.extend_item_ids(params, model, 3, seed=7) is params  # nothing new


def test_markets_fine_tuned_alone_train_exactly_as_beside_the_others(tmp_path):
    # config.data.finetune_markets: a leave-one-market-out point fine-tunes its newcomer
    # alone. Market a has 30 users, so an epoch is 2 steps for every market (one pass over
    # the largest), where c alone would take 1; the sampled protocol draws each market's
    # negatives by its index, which is 2 beside the others and would be 0 alone; fresh
    # parameters come from the whole stack's init keys. A learning rate of 0.05 makes either
    # slip change c's ranks (each was checked to fail this test).
    data = tmp_path / "data"
    write_markets(data)
    extra = [
        f"a{u} i{(u + k) % 10} 5.0 2020-02-{k + 1:02d}" for u in range(10, 30) for k in range(6)
    ]
    with open(data / "ratings_a_x.txt", "a") as f:
        f.write("\n".join(extra) + "\n")
    results, ranks = {}, {}
    for name, chosen in (("whole", ""), ("alone", "c")):
        config = config_for(data, "c")
        config.update_from_flattened_dict(
            {"methods": "local,fedavg_id", "data.finetune_markets": chosen,
             "finetune.max_epochs": 2, "finetune.lr": 0.05, "eval.protocol": "sampled99"}
        )  # fmt: skip
        experiment.train_and_evaluate(config, str(tmp_path / name))
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        ranks[name] = results_lib.read_ranks(tmp_path / name / "ranks.npz")
    assert results["whole"]["markets"] == ["a", "b", "c"] and results["alone"]["markets"] == ["c"]
    for method in ("local", "fedavg_id", "popularity"):
        assert results["alone"]["methods"][method]["c"] == results["whole"]["methods"][method]["c"]
        assert list(ranks["alone"][method]) == ["c"]
        assert ranks["alone"][method]["c"] == ranks["whole"][method]["c"]
    assert results["whole"]["methods"]["local"]["c"]["best_epoch"] > 0  # it trained
    # What the item-ID model starts from is the same pretraining: the members' only.
    alone, whole = (final_state(tmp_path / n, PRETRAIN_ID)[1] for n in ("alone", "whole"))
    assert all(np.array_equal(x, y) for x, y in zip(alone, whole, strict=True))


# --- Pretrained models as artifacts. ---------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished run of fecosr on the test config: (its workdir, its export of
    federated_s2ce)."""
    workdir = tmp_path_factory.mktemp("exporter")
    config = test_config.get_config()
    config.update_from_flattened_dict({"methods": "fecosr", "plots": False})
    experiment.train_and_evaluate(config, str(workdir))
    return workdir, workdir / "pretrained" / "federated_s2ce"


def test_a_loaded_export_fine_tunes_exactly_as_the_run_that_pretrained_it(exported, tmp_path):
    workdir, export = exported
    meta = pretrained_lib.read(str(export)).meta
    assert meta["key"] == "federated_s2ce" and meta["rounds"] == 3 and meta["seed"] == 0
    assert sorted(meta["trained_on"]) == ["m0000", "m0001", "m0002"]
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    config = test_config.get_config()
    config.update_from_flattened_dict(
        {"methods": "fecosr", "plots": False, "pretrained": str(copy)}
    )
    experiment.train_and_evaluate(config, str(tmp_path / "loaded"))
    got = json.loads((tmp_path / "loaded" / "results.json").read_text())
    want = json.loads((workdir / "results.json").read_text())
    assert got["methods"]["fecosr"] == want["methods"]["fecosr"]  # every market, every metric
    assert (tmp_path / "loaded" / "ranks.npz").read_bytes() == (workdir / "ranks.npz").read_bytes()
    assert got["pretrained"]["key"] == "federated_s2ce" and "newcomers" not in got
    assert not (tmp_path / "loaded" / "pretrained").exists()  # nothing pretrained there
    assert not (tmp_path / "loaded" / "checkpoints" / PRETRAIN).exists()
    # The model it started from is one of its inputs: another one under the same path and
    # the finished run refuses to report, naming it.
    meta = json.loads((copy / "pretrained.json").read_text())
    (copy / "pretrained.json").write_text(json.dumps({**meta, "fingerprint": "0" * 32}))
    with pytest.raises(resume.IncompatibleCheckpoint, match="the pretrained model in config."):
        experiment.train_and_evaluate(config, str(tmp_path / "loaded"))


@pytest.mark.parametrize(
    "method, key", [("fecosr", "federated_s2ce"), ("fedavg_id", "federated_id_ce")]
)
def test_a_newcomer_fine_tunes_from_an_export_of_the_others(tmp_path, method, key):
    # The item-ID export's vocabulary is a and b's: c's shared items map onto it, and its own
    # 6 items get new rows (extend_item_ids).
    data = tmp_path / "data"
    write_markets(data)
    federation = config_for(data, "c")
    federation.update_from_flattened_dict({"methods": method})
    experiment.train_and_evaluate(federation, str(tmp_path / "federation"))
    export = tmp_path / "federation" / "pretrained" / key
    config = config_for(data, "")
    config.update_from_flattened_dict(
        {"data.markets": "c", "methods": method, "pretrained": str(export)}
    )
    experiment.train_and_evaluate(config, str(tmp_path / "newcomer"))
    results = json.loads((tmp_path / "newcomer" / "results.json").read_text())
    assert results["markets"] == ["c"] and results["newcomers"] == ["c"]  # by its data
    assert results["pretrained"]["trained_on"] == ["a", "b"]
    assert np.isfinite(results["methods"][method]["c"]["ndcg@10"])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--config.model.hidden=32"],
         "another architecture: model.hidden is 16 there, 32 here"),
        (["--config.data.semantics=random", "--config.data.random_dim=8"],
         "another item space: items.generator is"),
        (["--config.methods=fecosr,fedavg_ce"],
         "holds the pretraining federated_s2ce, but config.methods='fecosr,fedavg_ce' pretrain "
         "federated_s2ce, federated_ce"),
        (["--config.data.newcomers=m0002"], "nothing pretrains in this run"),
    ],
    ids=["architecture", "item space", "methods", "newcomers"],
)  # fmt: skip
def test_an_export_that_does_not_fit_is_refused_in_one_line(exported, tmp_path, flags, named):
    _, export = exported
    flags = [f"--config.pretrained={export}", "--config.methods=fecosr", *flags]  # last wins
    stderr = refused_by_main(tmp_path / "w", *flags)
    assert named in stderr, stderr


def test_a_missing_or_changed_export_is_refused_in_one_line(exported, tmp_path):
    _, export = exported
    stderr = refused_by_main(
        tmp_path / "w", f"--config.pretrained={tmp_path / 'none'}", "--config.methods=fecosr"
    )
    assert "none: no pretrained.json there" in stderr
    changed = tmp_path / "changed"
    shutil.copytree(export, changed)
    meta = json.loads((changed / "pretrained.json").read_text())
    meta["fingerprint"] = "0" * 32  # parameters other than the ones it was written with
    (changed / "pretrained.json").write_text(json.dumps(meta))
    # Reading the parameters needs tensorstore, which a fork of a process that used it cannot
    # run: this one is a process of its own.
    import subprocess
    import sys

    from tests.conftest import ROOT

    command = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/test.py",
               f"--workdir={tmp_path / 'w'}", f"--config.pretrained={changed}",
               "--config.methods=fecosr"]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "do not match the fingerprint in pretrained.json" in out.stderr
    assert not (tmp_path / "w").exists()


def test_an_export_under_a_relative_workdir_is_written_and_read(tmp_path, monkeypatch):
    # orbax takes absolute paths only: the main job's workdir (workdir/default) is relative.
    monkeypatch.chdir(tmp_path)
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    pretrained_lib.write("workdir/pretrained/x", params, {"key": "x", "kind": "x"})
    export = pretrained_lib.read("workdir/pretrained/x")
    np.testing.assert_array_equal(export.params(params)["w"], params["w"])
    assert export.meta["fingerprint"] == pretrained_lib.fingerprint(params)
