"""What a run checks before it writes anything, without touching a workdir: the data it loads
(`prepare_markets`, `load`), what depends on the data (`checked_runner`: source markets,
participation, privacy settings), a whole group's inputs (`check_inputs`, which `--overwrite`
and launch/sweep.py run first) and the workdir's layout (`check_layout`)."""

from __future__ import annotations

import ml_collections
from etils import epath

from fecosr_jax import mesh, progress
from fecosr_jax.data import leave_one_out, stack_markets
from fecosr_jax.data.market import Market
from fecosr_jax.data.sources import markets_from_config
from fecosr_jax.data.split import MarketSplit, StackedMarkets
from fecosr_jax.errors import ConfigError
from fecosr_jax.runs import paradigms, runner, typed_configs
from fecosr_jax.store import resume
from fecosr_jax.store.files import read_json


def prepare_markets(
    config: ml_collections.ConfigDict, *, num_markets_multiple: int = 1
) -> tuple[list[Market], list[MarketSplit], StackedMarkets]:
    """Loads the markets of `config.data`, splits them and stacks them on the market axis."""
    markets = markets_from_config(typed_configs.data(config), typed_configs.synthetic(config))
    splits = [
        leave_one_out(
            m,
            config.data.max_len,
            min_interactions=config.data.min_interactions,
            train_windows=config.data.train_windows,
        )
        for m in markets
    ]
    return markets, splits, stack_markets(splits, num_markets_multiple=num_markets_multiple)


def load(
    config: ml_collections.ConfigDict,
) -> tuple[list[Market], list[MarketSplit], StackedMarkets]:
    """The markets of `config`, stacked for the devices the run computes on."""
    return prepare_markets(
        config, num_markets_multiple=len(mesh.run_devices(config.get("num_devices", 0)))
    )


def checked_runner(configs, markets, splits, stacked, times) -> runner.Runner:
    """The group's runner, once what depends on the data is checked: the methods' source
    markets, the participation, and every run's privacy settings (`configs`, the group's)."""
    config = configs[0]
    names = [m.name for m in markets]
    members = typed_configs.data(config).pretrain_market_names(names)
    methods = paradigms.expand_sources(paradigms.parse_methods(config.methods), names, members)
    clients = config.federated.clients_per_round
    if clients > len(members):
        among = "markets" if len(members) == len(names) else "markets that pretrain"
        raise ConfigError(
            f"config.federated.clients_per_round={clients}: this data has {len(members)} "
            f"{among} (0 = all of them every round)"
        )
    trainer = runner.Runner(config, splits, stacked, names, methods, times)
    trainer.pretrainer.check_privacy(configs)
    trainer.pretrainer.check_loaded()
    return trainer


def check_inputs(configs: list[ml_collections.ConfigDict]) -> None:
    """What a run checks before it writes anything, without touching any workdir: every
    config (typed_configs.check), the data they load (the configs of one group load the same
    data) and what depends on it (`checked_runner`). `--overwrite` runs it before it moves
    the old run aside, so a bad value or file leaves the old run where it was; launch/sweep.py
    before it writes anything."""
    for config in configs:
        typed_configs.check(config)
    markets, splits, stacked = load(configs[0])
    checked_runner(configs, markets, splits, stacked, progress.PhaseTimes())


def check_layout(workdir: str, seeds: list[int]) -> None:
    """Refuses a run whose results would overwrite another layout's in `workdir`: a
    single-seed run where several seeds' combined results are, or the reverse, or combined
    results of other seeds."""
    root = epath.Path(workdir)
    single = (root / "checkpoints" / "progress.json").exists()
    results = root / "results.json"
    saved = read_json(results).get("seeds") if results.exists() and not single else None
    several = any(root.glob("seed_*")) if root.exists() else False
    problem = None
    if len(seeds) > 1 and single:
        problem = "a single-seed run; the combined results of several seeds would replace its"
    elif len(seeds) == 1 and not single and (saved or several):
        problem = "a run of several seeds; a single-seed run would replace its combined results"
    elif len(seeds) > 1 and saved and saved != seeds:
        problem = f"the combined results of seeds {saved}, not of {seeds}"
    if problem:
        raise resume.IncompatibleCheckpoint(
            f"{workdir} holds {problem}. Use a new --workdir, or --overwrite to move it aside"
        )
