r"""The default's synthetic generator at the full budget: 8 synthetic markets of 300 users on
average, 100 federated rounds, every method. The default until 2026-11-30, when the main job
(default.py) took a smaller budget to stay within 12 minutes on a 2-core CPU; docs/results.md
"Default synthetic markets at the full budget" is this config's table (about 18 minutes on
that CPU).

  python -m experiments.main --config=experiments/configs/full.py --workdir=workdir/full
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.synthetic.users_per_market = 300
    config.num_rounds = 100
    return config
