"""Every class of bad input gets a DataError naming the file, line and field; nothing partial."""

import os

import numpy as np
import pytest

from fecosr_jax.data import DataError, leave_one_out, market_from_interactions, recbole, xmrec
from fecosr_jax.data import semantics as sem
from fecosr_jax.data.market import Interactions


def write(path, text):
    path.write_text(text)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        xmrec.load_ratings(tmp_path / "nope.txt")


def test_wrong_column_count(tmp_path):
    p = write(tmp_path / "a.txt", "userId itemId rate date\nu1 i1 5.0 2020-01-01\nu2 i1 5.0\n")
    with pytest.raises(DataError, match=r"a\.txt:3: expected 4 columns"):
        xmrec.load_ratings(p)


def test_recbole_wrong_column_count(tmp_path):
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t2\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"d\.inter:3: expected 2 tab-separated columns, found 3"):
        recbole.load_markets(tmp_path, "d")


def test_non_numeric_rating(tmp_path):
    p = write(tmp_path / "a.txt", "u1 i1 five 2020-01-01\n")
    with pytest.raises(DataError, match=r"a\.txt:1: field 'rate': rating 'five' is not a number"):
        xmrec.load_ratings(p)


def test_recbole_non_numeric_float_field(tmp_path):
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tsoon\n")
    with pytest.raises(DataError, match=r"d\.inter:2: field 'timestamp'"):
        recbole.load_markets(tmp_path, "d")
    # A timestamp declared a token, holding dates: named too (line 4, after a blank line).
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:token\n1\t2\t5\n\n")
    with open(tmp_path / "d.inter", "a") as f:
        f.write("1\t3\t2020-01-01\n")
    with pytest.raises(DataError, match=r"d\.inter:4: field 'timestamp': '2020-01-01' is not a"):
        recbole.load_markets(tmp_path, "d")


def test_bad_date(tmp_path):
    p = write(tmp_path / "a.txt", "u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-13-45\n")
    with pytest.raises(DataError, match=r"a\.txt:2: field 'date': date '2020-13-45'"):
        xmrec.load_ratings(p)


def test_empty_market(tmp_path):
    p = write(tmp_path / "ca_5core.txt", "userId itemId rate date\n")
    with pytest.raises(DataError, match=r"ca_5core\.txt: no interactions"):
        xmrec.load_markets(tmp_path, ["ca"])
    with pytest.raises(DataError, match="market 'e' has no interactions"):
        market_from_interactions("e", Interactions(*(np.array([]),) * 3, source=str(p)))


def test_unknown_market_lists_the_known_ones(tmp_path):
    write(tmp_path / "ca_5core.txt", "u1 i1 5.0 2020-01-01\n")
    with pytest.raises(DataError, match=r"field 'markets': unknown market 'zz'.*found: ca"):
        xmrec.load_markets(tmp_path, ["zz"])


def test_unknown_ml100k_region(ml100k_dir):
    with pytest.raises(DataError, match=r"unknown markets \['q'\]"):
        recbole.load_ml100k_regions(ml100k_dir, ["q"])


def test_short_users_are_dropped_with_a_count(caplog):
    rows = Interactions(
        np.array(["u", "u", "u", "v"]), np.array(["a", "b", "c", "a"]), np.arange(4.0), "t"
    )
    split = leave_one_out(market_from_interactions("m", rows), 5)
    assert split.num_dropped_users == 1 and split.num_users == 1
    assert "dropped 1 of 2 users with fewer than 3" in caplog.text


def vector_files(tmp_path, vectors, ids):
    np.save(tmp_path / "v.npy", np.asarray(vectors))
    write(tmp_path / "ids.txt", "".join(f"{i}\n" for i in ids))
    return tmp_path / "v.npy", tmp_path / "ids.txt"


def test_embedding_wrong_row_count(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: 3 rows but 2 ids"):
        sem.load_vector_table(v, i)


def test_embedding_wrong_dimension(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 4)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: vectors have dimension 4, expected 8"):
        sem.load_vector_table(v, i, dim=8)


def test_embedding_npz_archive_or_garbage(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 4)), ["a", "b"])
    np.savez(tmp_path / "v.npz", vectors=np.zeros((2, 4)))
    with pytest.raises(DataError, match=r"v\.npz: an \.npz archive, not an \.npy array"):
        sem.load_vector_table(tmp_path / "v.npz", i)
    (tmp_path / "g.npy").write_bytes(b"\x00\xff garbage")
    with pytest.raises(DataError, match=r"g\.npy: not a numeric \.npy array"):
        sem.load_vector_table(tmp_path / "g.npy", i)


def test_embedding_zero_width(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 0)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: vectors of width 0 \(shape \(2, 0\)\)"):
        sem.load_vector_table(v, i)


def test_embedding_nan_or_inf(tmp_path):
    vectors = np.zeros((3, 2))
    vectors[2, 1] = np.inf
    v, i = vector_files(tmp_path, vectors, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"1 rows hold NaN or Inf, first row 2 \(id 'c'\)"):
        sem.load_vector_table(v, i)


def test_embedding_duplicate_ids(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((3, 2)), ["a", "b", "a"])
    with pytest.raises(DataError, match=r"ids\.txt:3: duplicate id 'a' \(first at line 1\)"):
        sem.load_vector_table(v, i)


def test_embedding_missing_catalogue_item(tmp_path):
    v, i = vector_files(tmp_path, np.ones((1, 2)), ["a"])
    m = market_from_interactions(
        "m", Interactions(np.array(["u", "u"]), np.array(["a", "b"]), np.arange(2.0), "t")
    )
    with pytest.raises(DataError, match=r"market 'm': 1 of 2 items have no semantic vector"):
        sem.attach_semantics([m], sem.load_vector_table(v, i), source=str(v))


def test_metadata_line_not_a_literal_dict(tmp_path):
    p = write(tmp_path / "meta.json", "{'asin': 'a', 'title': 'ok'}\n['not', 'a', 'dict']\n")
    with pytest.raises(DataError, match=r"meta\.json:2: expected a dict literal, found list"):
        xmrec.load_metadata(p)
    p = write(tmp_path / "meta2.json", "{'asin': 'a', 'title': 'ok'\n")
    with pytest.raises(DataError, match=r"meta2\.json:1: not a Python literal dict"):
        xmrec.load_metadata(p)


def test_text_cache_writes_nothing_partial(tmp_path):
    def broken(texts):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        sem.encode_texts(["a", "b"], model="m", cache_dir=tmp_path, encode_fn=broken)
    assert os.listdir(tmp_path) == []


# --- Config values: refused before anything is read or written, naming the field. ---------


def _config(**fields):
    from experiments.configs import test as test_config

    config = test_config.get_config()
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in fields.items()})
    return config


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"federated__client_lr": -0.1}, "config.federated.client_lr=-0.1: expected a positive"),
        ({"federated__server_lr": 0.0}, "config.federated.server_lr=0.0"),
        ({"finetune__lr": -1e-3}, "config.finetune.lr=-0.001"),
        ({"num_rounds": 0}, "config.num_rounds=0: expected at least 1"),
        ({"finetune__batch_size": 0}, "config.finetune.batch_size=0"),
        ({"finetune__adapter_dim": -1}, "config.finetune.adapter_dim=-1: expected 0 (no adapter)"),
        ({"eval__protocol": "sampled100"}, "config.eval.protocol='sampled100': expected one of"),
        ({"eval__batch_size": 0}, "config.eval.batch_size=0"),
        ({"data__markets": "m0000,m0000,m0001"}, "m0000 twice"),
        ({"data__min_interactions": 2}, "config.data.min_interactions=2"),
        ({"data__duplicates": "merge"}, "config.data.duplicates='merge': expected one of drop"),
        ({"data__semantics": "bert"}, "config.data.semantics='bert': expected one of auto"),
        ({"data__kcore": -1}, "config.data.kcore=-1: expected 0 or more"),
        ({"data__train_windows": -2}, "config.data.train_windows=-2"),
        ({"data__format": "csv"}, "config.data.format='csv': expected one of xmrec"),
        ({"federated__alpha": 1.5}, "config.federated.alpha=1.5 is out of range"),
        ({"federated__loss": "mse"}, "config.federated.loss='mse': expected one of"),
        ({"model__norm": "mid"}, "config.model.norm='mid': expected pre or post"),
        ({"methods": "fecosr,nope"}, "config.methods: unknown methods ['nope']"),
        ({"federated__clients_per_round": 4}, "clients_per_round=4: this data has 3 markets"),
        ({"transfer_source": "zz"}, "config.transfer_source='zz' is not a market"),
        ({"runs_per_step": -1}, "config.runs_per_step=-1"),
        ({"num_devices": 9}, "config.num_devices=9: expected 0 (every device) or 1 to 8"),
        ({"federated__dp__clip_norm": -1.0}, "config.federated.dp.clip_norm=-1.0 is out of"),
        (  # the data decides (the transfer source m0002, 40000 steps): refused before the workdir
            {
                "federated__dp__enabled": True,
                "federated__dp__target_epsilon": 1.0,
                "num_rounds": 20000,
            },
            "config.federated.dp.target_epsilon=1.0 cannot be met in market m0002: with 55 users",
        ),
        (
            {"federated__dp__enabled": True, "federated__dp__expected_batch_size": 12},
            "expected_batch_size=12 is above config.federated.batch_size=8",
        ),
    ],
    ids=lambda x: next(iter(x)) if isinstance(x, dict) else None,
)
def test_bad_config_values_are_refused_before_the_workdir_is_touched(tmp_path, fields, named):
    from fecosr_jax import errors, experiment

    workdir = tmp_path / "w"
    with pytest.raises(errors.ConfigError) as e:
        experiment.train_and_evaluate(_config(**fields), str(workdir))
    assert named in str(e.value)
    assert errors.exit_code(e.value) == errors.EXIT_BAD_INPUT
    assert not workdir.exists()


def _shipped_configs() -> list[str]:
    import pkgutil

    from experiments import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


@pytest.mark.parametrize("name", _shipped_configs())
def test_every_shipped_config_passes_the_config_check(name):
    # The check once refused ml100k_sasrec's adapter_dim = 0 (no adapter), so README's peer
    # check command exited 2 at once.
    import importlib

    from fecosr_jax import config_check

    config_check.check(importlib.import_module(f"experiments.configs.{name}").get_config())


def run_main(workdir, *flags):
    """experiments.main on the test config in a process of its own: its CompletedProcess."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    command = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/test.py",
        f"--workdir={workdir}",
        *flags,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_the_command_line_says_one_line_and_exits_2(tmp_path):
    workdir = tmp_path / "w"
    out = run_main(workdir, "--config.finetune.lr=-0.001")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: config.finetune.lr=-0.001: expected a positive learning rate"
    )
    assert not workdir.exists()
    # The traceback only when asked for.
    out = run_main(workdir, "--config.finetune.lr=-0.001", "--verbosity=1")
    assert out.returncode == 2 and "Traceback" in out.stderr


@pytest.mark.parametrize(
    "flag, named",
    [
        ("--no_such_flag=1", "'no_such_flag'"),  # absl: unknown flag
        ("--config=experiments/configs/nope.py", "--config=experiments/configs/nope.py:"),
        ("--workdir", "--workdir"),  # no value
    ],
)
def test_a_flag_that_does_not_parse_is_one_line_and_exit_2(flag, named, capsys, monkeypatch):
    from absl import flags
    from ml_collections import config_flags

    from fecosr_jax import errors
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    values = flags.FlagValues()  # the flags of experiments.main, apart from the global ones
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    argv = ["main", "--config=experiments/configs/test.py", "--workdir=w", flag]  # last wins
    with pytest.raises(SystemExit) as e:
        errors.parse_flags(argv, values)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err and "Traceback" not in err
    # The same flags without the bad one parse.
    assert errors.parse_flags(argv[:-1], values) == ["main"]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.federated.no_such_field=1", "--config.federated.no_such_field: the config "
         "has no such field"),
        ("--config.num_rounds=many", "flag --config.num_rounds=many: invalid literal for int() "
         "with base 10: 'many'"),
    ],
)  # fmt: skip
def test_experiments_main_parses_its_flags_so(tmp_path, flag, message):
    # --config.FIELD flags exist only once config_flags has loaded the config: in a process.
    workdir = tmp_path / "w"
    out = run_main(workdir, flag)
    assert out.returncode == 2
    assert out.stderr == f"error: {message} (--helpfull lists the flags)\n"
    assert not workdir.exists()


# --- A workdir's results are never mixed or replaced. ----------------------------------------


def test_a_run_on_changed_data_is_refused_naming_the_market(tmp_path):
    from fecosr_jax import resume

    config = {"seed": 0}
    first = resume.RunCheckpoints(str(tmp_path), config, {}, start=False)
    first.check_data({"ca": "aa", "de": "bb"})
    first.start()
    again = resume.RunCheckpoints(str(tmp_path), config, {}, start=False)
    again.check_data({"ca": "aa", "de": "bb"})  # the same data resumes
    changed = resume.RunCheckpoints(str(tmp_path), config, {}, start=False)
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"market\(s\) de changed"):
        changed.check_data({"ca": "aa", "de": "cc"})
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"market\(s\) fr changed"):
        changed.check_data({"ca": "aa", "de": "bb", "fr": "dd"})


def test_data_fingerprints_see_one_changed_item():
    from fecosr_jax import resume

    interactions = Interactions(
        np.array(["u1"] * 4 + ["u2"] * 4), np.array(list("abcdabce")), np.arange(8.0)
    )
    split = leave_one_out(market_from_interactions("m", interactions), 4)
    other = Interactions(interactions.users, np.array(list("abcdabcf")), interactions.times)
    changed = leave_one_out(market_from_interactions("m", other), 4)
    assert resume.data_fingerprints([split]) == resume.data_fingerprints([split])
    assert resume.data_fingerprints([split]) != resume.data_fingerprints([changed])


@pytest.mark.parametrize(
    "layout, seeds, named",
    [
        ("single", "2", "holds a single-seed run"),
        ("seeds", "1", "holds a run of several seeds"),
        ("seeds", "0,1", "holds the combined results of seeds [0, 1, 2], not of [0, 1]"),
    ],
)
def test_a_run_never_replaces_another_layouts_results(tmp_path, layout, seeds, named):
    from fecosr_jax import experiment, resume

    workdir = tmp_path / "w"
    if layout == "single":
        (workdir / "checkpoints").mkdir(parents=True)
        (workdir / "checkpoints" / "progress.json").write_text("{}")
    else:
        (workdir / "seed_0").mkdir(parents=True)
        (workdir / "results.json").write_text('{"seeds": [0, 1, 2]}')
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    with pytest.raises(resume.IncompatibleCheckpoint, match=named.replace("[", r"\[")):
        experiment.train_and_evaluate(_config(seeds=seeds), str(workdir))
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_overwrite_moves_a_run_aside_and_deletes_nothing(tmp_path):
    from fecosr_jax import files

    run = tmp_path / "w"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text("old")
    moved = files.move_aside(run)
    assert moved.startswith(str(run) + ".moved-") and not run.exists()
    assert (tmp_path / moved.rsplit("/", 1)[1] / "results.json").read_text() == "old"
    assert files.move_aside(run) is None  # nothing there: nothing to move


# --- Files that are not what their name says. ---------------------------------------------


def test_a_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffuserId itemId rate date\nu1 i1 5.0 2020-01-01\n".encode())
    log = xmrec.load_ratings(p)  # the BOM would make the header a phantom user
    assert log.users.tolist() == ["u1"]
    write(tmp_path / "d.inter", "\ufeffuser_id:token\titem_id:token\n1\t2\n")
    (market,) = recbole.load_markets(tmp_path, "d")
    assert market.user_ids.tolist() == ["1"]


@pytest.mark.parametrize(
    "name, content, named",
    [
        ("a.txt", b"u1 i1 5.0 2020-01-01\n\x00\x01\x02\n", r"a\.txt:2: a NUL byte"),
        ("a.txt", b"u1 i1 5.0 2020-01-01\nu2 \xff\xfe 5.0 2020-01-01\n", r"a\.txt:2: not UTF-8"),
        ("a.txt.gz", b"u1 i1 5.0 2020-01-01\n", r"a\.txt\.gz: named \.gz but not a gzip file"),
    ],
)
def test_binary_undecodable_or_fake_gzip_files_are_named(tmp_path, name, content, named):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=named):
        xmrec.load_ratings(p)


def test_ml100k_regions_need_the_zip_code_field(tmp_path):
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\n1\t2\n")
    write(tmp_path / "ml-100k.user", "user_id:token\tage:float\n1\t30\n")
    with pytest.raises(DataError, match=r"ml-100k\.user: field 'zip_code': missing field"):
        recbole.load_ml100k_regions(tmp_path)


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path, caplog):
    """A repeated last row made the user's test item their validation item. Dropped (the
    first kept) and counted, naming the file; `keep` keeps it; a row that differs in any
    field (here the date, or the rating) is no duplicate."""
    rows = ["u1 i1 5.0 2020-01-01", "u1 i2 5.0 2020-01-02", "u1 i3 4.0 2020-01-03"]
    more = ["u1 i3 4.0 2020-01-03", "u1 i3 4.0 2020-01-04", "u1 i3 5.0 2020-01-03"]
    p = write(tmp_path / "a.txt", "\n".join(rows + more[:1]) + "\n")
    split = {}
    for duplicates in ("keep", "drop"):
        log = xmrec.load_ratings(p, duplicates=duplicates)
        market = market_from_interactions("a", log)
        split[duplicates] = leave_one_out(market, 5)
    assert split["keep"].valid_targets[0] == split["keep"].test_targets[0]  # i3 and i3
    assert split["drop"].valid_targets[0] != split["drop"].test_targets[0]  # i2, then i3
    assert f"{p}: dropped 1 exact duplicate rows of 4" in caplog.text
    caplog.clear()
    write(p, "\n".join(rows + more[1:]) + "\n")
    assert len(xmrec.load_ratings(p)) == 5 and "dropped" not in caplog.text
    lines = ["user_id:token\titem_id:token\ttimestamp:float", "1\t2\t10", "1\t3\t11", "1\t2\t10"]
    inter = write(tmp_path / "d.inter", "\n".join(lines) + "\n")
    (market,) = recbole.load_markets(tmp_path, "d")
    assert market.num_interactions == 2
    assert f"{inter}: dropped 1 exact duplicate rows of 3" in caplog.text
    (market,) = recbole.load_markets(tmp_path, "d", duplicates="keep")
    assert market.num_interactions == 3


def test_a_cut_results_file_is_named_wherever_it_is_read(tmp_path):
    """results.json is written whole; one cut by something else is a one-line BadInput that
    names it: a finished run reporting, experiments.compare and the sweep's collection all
    read it through files.read_json."""
    from fecosr_jax import errors, files, sweep_results

    path = write(tmp_path / "results.json", '{"markets": ["a", "b"], "methods": {"lo')
    for read in (files.read_json, lambda p: sweep_results.collect(p.parent, {})):
        with pytest.raises(errors.BadInput, match=f"{path}: not readable JSON .*complete"):
            read(path)
