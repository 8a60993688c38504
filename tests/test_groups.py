"""fecosr_jax.runs.groups: which runs may train together, the --run flag, and its errors."""

import pytest

from experiments.configs import test as test_config
from fecosr_jax.runs import groups
from tests.conftest import refused_by_main


def test_runs_that_differ_only_in_values_form_a_group():
    base = test_config.get_config()
    configs = [
        groups.run_config(base, {"federated.alpha": "0.5", "seed": "3"}),
        groups.run_config(base, {"federated.temperature": "1", "finetune.lr": "0.01"}),
        groups.with_seed(base, 7),
    ]
    assert configs[0].federated.alpha == 0.5 and configs[0].seed == 3
    assert isinstance(configs[0].seed, int) and isinstance(configs[1].finetune.lr, float)
    assert base.federated.alpha != 0.5  # the base config is not changed
    groups.check_group(configs, ["a", "b", "c"])  # does not raise


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("num_rounds", 17, "config.num_rounds"),
        ("federated.local_steps", 7, "config.federated.local_steps"),
        ("methods", "local", "config.methods"),
        ("synthetic.num_markets", 11, "config.synthetic.num_markets"),
        # A value whose zero changes the program: FedProx on, the shared part frozen.
        ("federated.fedprox_mu", 0.1, "config.federated.fedprox_mu"),
        ("finetune.shared_lr_mult", 0.0, "config.finetune.shared_lr_mult"),
        ("model.dropout", 0.0, "config.model.dropout"),
        ("federated.dp.enabled", True, "config.federated.dp.enabled"),  # its budget is a value
    ],
)
def test_runs_that_differ_in_the_program_are_refused_naming_the_field(field, value, named):
    base = test_config.get_config()
    other = groups.run_config(base, {})
    *parents, leaf = field.split(".")
    node = other
    for p in parents:
        node = node[p]
    assert node[leaf] != value
    node[leaf] = value
    with pytest.raises(groups.GroupError, match=f"runs a and b differ in {named}"):
        groups.check_group([base, other], ["a", "b"])


def test_nonzero_fedprox_values_and_dropout_rates_share_a_group():
    base = test_config.get_config()
    a = groups.run_config(base, {"federated.fedprox_mu": "0.01", "model.dropout": "0.1"})
    b = groups.run_config(base, {"federated.fedprox_mu": "0.1", "model.dropout": "0.3"})
    groups.check_group([a, b], ["a", "b"])


def test_run_flag():
    assert groups.parse_run("alpha0.5_seed1:federated.alpha=0.5,seed=1") == (
        "alpha0.5_seed1",
        {"federated.alpha": "0.5", "seed": "1"},
    )
    assert groups.parse_run("plain:") == ("plain", {})
    for bad, message in [
        ("noname", "expected NAME:FIELD=VALUE"),
        ("a/b:seed=1", "expected NAME:FIELD=VALUE"),
        ("x:num_rounds=3", "'num_rounds=3': a run sets FIELD=VALUE"),
        ("x:seed", "'seed': a run sets FIELD=VALUE"),
    ]:
        with pytest.raises(groups.GroupError, match=message):
            groups.parse_run(bad)
    with pytest.raises(groups.GroupError, match="seed='x': expected a int"):
        groups.run_config(test_config.get_config(), {"seed": "x"})


def test_bad_run_flags_exit_2_with_one_line_before_anything_is_written(tmp_path):
    # Through experiments.main's entry point (tests.conftest.refused_by_main): exit 2, one
    # line naming the flag, no traceback, nothing written.
    for flags, named in [
        (["--run=a:num_rounds=3"], "--run=a:num_rounds=3: 'num_rounds=3'"),
        (["--run=a:seed=x"], "--run=a:seed=x: seed='x'"),
        (["--run=a:seed=1", "--run=a:seed=2"], "share a workdir"),
        (
            ["--run=a:seed=1", "--run=b:finetune.shared_lr_mult=0"],
            "runs a and b differ in config.finetune.shared_lr_mult",
        ),
    ]:
        assert named in refused_by_main(tmp_path / "w", *flags)
    assert not (tmp_path / "w").exists()
