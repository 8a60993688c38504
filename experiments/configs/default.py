r"""Default experiment: 8 synthetic markets with semantic vectors, every method.

Run locally (installs into .venv on first use):
  bash launch/run.sh
  python -m experiments.main --config=experiments/configs/default.py --workdir=workdir/default
Override any field: --config.synthetic.num_markets=64 --config.data.max_len=50

Its budget (160 users per market on average, 40 federated rounds) keeps the first command a
newcomer runs within 12 minutes on a 2-core CPU; experiments/configs/full.py is the same
generator with 300 users per market and 100 rounds, the default until 2026-11-30
(docs/results.md has both). The other configs build on this one and set their own budgets.
"""

import dataclasses

import ml_collections

from fecosr_jax.data.sources import DataConfig
from fecosr_jax.data.synthetic import SyntheticConfig
from fecosr_jax.evaluation import EvalConfig
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune.config import FinetuneConfig
from fecosr_jax.model import ModelConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Where the markets come from and how they are split (fecosr_jax.data.sources.DataConfig:
    # its defaults, and what each field means).
    config.data = ml_collections.ConfigDict(dataclasses.asdict(DataConfig()))
    config.synthetic = ml_collections.ConfigDict(dataclasses.asdict(SyntheticConfig()))
    config.synthetic.users_per_market = 160  # the main job's budget (docstring; full.py: 300)
    # The shared model (fecosr_jax.model.ModelConfig, its defaults; max_len comes from
    # data.max_len, and the fields each method sets itself are left out).
    model = dataclasses.asdict(ModelConfig())
    for field in ("max_len", "item_id_init", "adapter_dim", "use_text", "dtype"):
        del model[field]
    config.model = ml_collections.ConfigDict(model)
    # Federated pretraining (fecosr_jax.federated.config.FedConfig; its seed is config.seed).
    fed = dataclasses.asdict(FedConfig())
    del fed["seed"]
    config.federated = ml_collections.ConfigDict(fed)
    config.num_rounds = 40  # the main job's budget (docstring; full.py: 100)
    # Stage 2 (fecosr_jax.finetune.loop.FinetuneConfig; mode is set per method, seed = config.seed).
    ft = dataclasses.asdict(FinetuneConfig())
    del ft["mode"], ft["seed"], ft["eval_batch_size"]  # eval_batch_size = eval.batch_size
    config.finetune = ml_collections.ConfigDict(ft)
    # Evaluation (fecosr_jax.evaluation.EvalConfig): protocol "full" (whole catalogue) or
    # "sampled99"; mask_seen masks the items of the user's input sequence.
    config.eval = ml_collections.ConfigDict(dataclasses.asdict(EvalConfig()))
    # Methods (fecosr_jax.runs.paradigms.METHODS), comma-separated or "all".
    config.methods = "all"
    config.transfer_source = ""  # "" = the market with the most training targets
    # A pretrained model to start from instead of pretraining: a folder a run wrote,
    # WORKDIR/pretrained/<name>/ (local or gs://; fecosr_jax.store.pretrained). "" = pretrain.
    config.pretrained = ""
    # Orbax checkpoints under WORKDIR/checkpoints (fecosr_jax.store.checkpoint): saved every `every`
    # rounds / epochs (and at the last one), the latest `keep` kept plus each fine-tuning's
    # best epoch. Re-running the same command with the same workdir resumes.
    config.checkpoint = ml_collections.ConfigDict(
        {"enabled": True, "keep": 2, "every": 1, "async_save": True}
    )
    config.tensorboard = True
    config.plots = True
    # Extra XLA flags, applied by experiments/main.py before JAX starts (e.g. a faster compile
    # for tiny configs: "--xla_backend_optimization_level=0").
    config.xla_flags = ""
    # JAX's persistent compilation cache (a folder, local or gs://): a re-run or another
    # process with the same shapes (a sweep) loads its compiled programs. "" = off.
    config.compilation_cache = "~/.cache/fecosr_jax/xla"
    config.seed = 0
    # Seeds: a count N (runs seed ... seed + N - 1, each in WORKDIR/seed_<s>/, and reports mean
    # ± std and paired tests against `local`) or a comma-separated list ("0,4,7").
    config.seeds = "1"
    # Runs (each seed of each method that shares a compiled program) train together on a
    # leading run axis, this many at a time (0 = all; 1 = one after another, each exactly as
    # alone). More at once fill an accelerator; the cost is memory (parameters and
    # activations per run).
    config.runs_per_step = 0
    # Devices the markets are split over: the first N of jax.devices() (0 = all; a run over
    # several processes uses all). Markets are padded to a multiple of N.
    config.num_devices = 0
    return config
