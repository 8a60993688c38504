"""Bad config values, flags and workdirs are refused before anything is written, with one line
and exit code 2: every config field, every shipped config, the command line, changed data, a
run of another layout, --overwrite, and a cut results file."""

import re

import numpy as np
import pytest

from fecosr_jax.data import leave_one_out, market_from_interactions
from fecosr_jax.data.market import Interactions


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
                "federated__dp__public": "catalogues,weights",
                "federated__dp__target_epsilon": 0.1,
                "num_rounds": 20000,
            },
            "config.federated.dp.target_epsilon=0.1 cannot be met in market m0002: with 55 users",
        ),
        (
            {
                "federated__dp__enabled": True,
                "federated__dp__public": "catalogues,weights",
                "federated__dp__expected_batch_size": 12,
            },
            "expected_batch_size=12 is above config.federated.batch_size=8",
        ),
        (  # what a private run sends without noise is declared public, or refused
            {"federated__dp__enabled": True, "federated__weighting": "uniform"},
            "config.federated.dp.enabled=True sends each market's item catalogue from its "
            "interactions (config.data.catalogue=interactions): the softmax every user's "
            "gradient is taken over, and the ID methods' union vocabulary without noise: set "
            "config.data.catalogue=published (each market's published items), or declare it "
            "public with config.federated.dp.public=catalogues",
        ),
        (
            {
                "federated__dp__enabled": True,
                "federated__dp__public": "catalogues",
                "federated__weighting": "examples",
            },
            "declare it public with config.federated.dp.public=catalogues,weights",
        ),
        ({"federated__dp__public": "users"}, "config.federated.dp.public='users': users is not"),
        ({"data__catalogue": "all"}, "config.data.catalogue='all'"),
    ],
    ids=lambda x: next(iter(x)) if isinstance(x, dict) else None,
)
def test_bad_config_values_are_refused_before_the_workdir_is_touched(tmp_path, fields, named):
    # Through the command line's entry point (experiments.main's main under absl, as
    # `python -m experiments.main` runs it): exit 2, one line that names the field and the flag
    # that set it, no traceback, and no workdir.
    from tests.conftest import refused_by_main

    flags = [f"--config.{k.replace('__', '.')}={v}" for k, v in fields.items()]
    stderr = refused_by_main(tmp_path / "w", *flags)
    assert named in stderr
    source = re.search(r"\(set by --config\.([\w.]+)\)$", stderr.strip())
    assert source and source[1] in {k.replace("__", ".") for k in fields}, stderr


def _shipped_configs() -> list[str]:
    import pkgutil

    from experiments import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


@pytest.mark.parametrize("name", _shipped_configs())
def test_every_shipped_config_passes_the_config_check(name):
    # The check once refused ml100k_sasrec's adapter_dim = 0 (no adapter), so README's peer
    # check command exited 2 at once.
    import importlib

    from fecosr_jax.runs import typed_configs

    typed_configs.check(importlib.import_module(f"experiments.configs.{name}").get_config())


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
        "error: config.finetune.lr=-0.001: expected a positive learning rate "
        "(set by --config.finetune.lr)"
    )
    assert not workdir.exists()
    # The traceback only when asked for.
    out = run_main(workdir, "--config.finetune.lr=-0.001", "--verbosity=1")
    assert out.returncode == 2 and "Traceback" in out.stderr


@pytest.mark.parametrize(
    "flag, named",
    [
        ("--no_such_flag=1", "'no_such_flag'"),  # absl: unknown flag
        ("--config={root}/experiments/configs/nope.py", "experiments/configs/nope.py:"),
        ("--workdir", "--workdir"),  # no value
        ("--config.federated.no_such_field=1", "--config.federated.no_such_field: the config "
         "has no such field (--helpfull lists the flags)"),
        ("--config.num_rounds=many", "flag --config.num_rounds=many: invalid literal for int() "
         "with base 10: 'many' (--helpfull lists the flags)"),
        ("extra", "unexpected arguments ['extra']: every argument is a --flag"),
        ("--coordinator_address=127.0.0.1:1", "need --distributed"),
    ],
)  # fmt: skip
def test_a_command_line_that_cannot_run_is_one_line_and_exit_2(tmp_path, flag, named):
    # Through the entry point (the flags are parsed there, as `python -m experiments.main`
    # parses them): exit 2, one line, no traceback, no workdir. The last --workdir or
    # --config wins, so the bad one comes last.
    from tests.conftest import ROOT, refused_by_main

    stderr = refused_by_main(tmp_path / "w", flag.format(root=ROOT))
    assert named in stderr, stderr


# --- A workdir's results are never mixed or replaced. ----------------------------------------


def test_a_run_on_changed_data_is_refused_naming_the_market(tmp_path):
    from fecosr_jax.store import resume

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
    from fecosr_jax.store import resume

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
    # Through the entry point: exit 2, one line, and the workdir byte for byte as it was.
    from tests.conftest import refused_by_main

    workdir = tmp_path / "w"
    if layout == "single":
        (workdir / "checkpoints").mkdir(parents=True)
        (workdir / "checkpoints" / "progress.json").write_text("{}")
    else:
        (workdir / "seed_0").mkdir(parents=True)
        (workdir / "results.json").write_text('{"seeds": [0, 1, 2]}')
    assert named in refused_by_main(workdir, f"--config.seeds={seeds}")


def test_a_config_error_says_where_the_value_was_set(tmp_path):
    # in the config file, by a --config. flag (test_bad_config_values_...), or by a --run value
    from tests.conftest import refused_by_main

    config = tmp_path / "bad.py"
    config.write_text(
        "from experiments.configs import test\n\n\ndef get_config():\n"
        "    config = test.get_config()\n    config.num_rounds = 0\n    return config\n"
    )
    stderr = refused_by_main(tmp_path / "w", f"--config={config}")  # the last --config wins
    assert stderr.strip().endswith(f"expected at least 1 federated round (set in {config})")
    stderr = refused_by_main(tmp_path / "w", "--run=a:finetune.lr=-1")
    assert stderr.strip().endswith("(set by --run=a:finetune.lr=-1)")


def test_sigterm_while_starting_exits_75_and_writes_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    command = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/test.py",
               f"--workdir={tmp_path / 'w'}"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # Python has started; JAX is still importing (or main() has begun)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert "Re-run the same command" in out and not (tmp_path / "w").exists()


def test_overwrite_with_a_bad_value_leaves_the_old_run_where_it_was(tmp_path):
    # refused_by_main: the old run byte for byte unchanged, nothing moved aside (bad data
    # files under --overwrite: test_bad_data).
    from tests.conftest import refused_by_main

    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "results.json").write_text("old")
    stderr = refused_by_main(workdir, "--overwrite", "--config.finetune.lr=-0.001")
    assert "config.finetune.lr=-0.001" in stderr
    flags = ("--config.data.format=xmrec", f"--config.data.path={tmp_path}/none")
    assert "none: data folder not found" in refused_by_main(workdir, "--overwrite", *flags)


def test_overwrite_moves_a_run_aside_and_deletes_nothing(tmp_path):
    from fecosr_jax.store import files

    run = tmp_path / "w"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text("old")
    moved = files.move_aside(run)
    assert moved.startswith(str(run) + ".moved-") and not run.exists()
    assert (tmp_path / moved.rsplit("/", 1)[1] / "results.json").read_text() == "old"
    assert files.move_aside(run) is None  # nothing there: nothing to move


# --- Files that are not what their name says. ---------------------------------------------


def test_a_cut_results_file_is_named_wherever_it_is_read(tmp_path):
    """results.json is written whole; one cut by something else is a one-line BadInput that
    names it: a finished run reporting, experiments.compare and the sweep's collection all
    read it through files.read_json."""
    from fecosr_jax import errors
    from fecosr_jax.report import sweep_results
    from fecosr_jax.store import files

    path = tmp_path / "results.json"
    path.write_text('{"markets": ["a", "b"], "methods": {"lo')
    for read in (files.read_json, lambda p: sweep_results.collect(p.parent, {})):
        with pytest.raises(errors.BadInput, match=f"{path}: not readable JSON .*complete"):
            read(path)
