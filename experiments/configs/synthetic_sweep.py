r"""Synthetic markets for sweeps: `:M` picks the number of markets (default 8).

  python -m experiments.main --config=experiments/configs/synthetic_sweep.py:64 \
      --workdir=workdir/sweep_m64
  --config.synthetic.heterogeneity=0.8 --config.synthetic.overlap=0.0 --config.federated.alpha=0.5
"""

from experiments.configs import default


def get_config(arg: str | None = None):
    config = default.get_config()
    config.synthetic.num_markets = int(arg) if arg else 8
    config.synthetic.users_per_market = 150
    config.synthetic.items_per_market = 200
    config.data.max_len = 20
    config.model.hidden = 32
    config.model.ffn_dim = 64
    config.model.num_layers = 1
    config.num_rounds = 40
    config.methods = "local,fedavg_ce,fecosr"
    config.finetune.max_epochs = 15
    return config
