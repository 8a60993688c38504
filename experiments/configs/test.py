r"""Tiny config for tests and smoke runs: 3 small synthetic markets, every method, seconds.

python -m experiments.main --config=experiments/configs/test.py --workdir=/tmp/fecosr_test
"""

from experiments.configs import default

# Tiny models: compiling dominates, so compile fast: XLA's backend at optimisation level 0, and
# on CPU the older elemental emitters instead of the fusion emitters. Same numbers (this
# config's results.json is byte for byte the same), slower kernels; on the 2-core CPU a run of
# this config took 77 s instead of 110 s (compiling 31 s instead of 64 s).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def get_config():
    config = default.get_config()
    config.data.max_len = 10
    config.synthetic.num_markets = 3
    config.synthetic.users_per_market = 40
    config.synthetic.items_per_market = 60
    config.synthetic.num_clusters = 6
    config.synthetic.semantic_dim = 8
    config.model.hidden = 16
    config.model.num_layers = 1
    config.model.ffn_dim = 32
    config.model.num_experts = 2
    config.federated.local_steps = 2
    config.federated.batch_size = 8
    config.num_rounds = 3
    config.finetune.max_epochs = 2
    config.finetune.batch_size = 16
    config.finetune.adapter_dim = 4
    config.eval.batch_size = 64
    config.tensorboard = True
    config.xla_flags = FAST_COMPILE
    # Three tiny markets gain nothing from being split over devices: one device computes them
    # (over 8 forced CPU devices a run took 92 s instead of 70 s: docs/running.md, num_devices).
    config.num_devices = 1
    return config
