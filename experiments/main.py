r"""Entry point: parse flags, hand the config to the library.

  python -m experiments.main --config=experiments/configs/default.py --workdir=DIR \
      [--config.field=value ...]
"""

import os

from absl import app, flags
from ml_collections import config_flags

from fecosr_jax import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config.get("xla_flags"):
        # Read when JAX starts its backend, which has not happened yet at this point.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {config.xla_flags}".strip()
    experiment.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
