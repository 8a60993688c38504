"""Per-market statistics of any data source.

  python -m fecosr_jax.data.stats --format=xmrec \
      --path=../shared/data/xmrec_electronics_5core --markets=ca,de,fr,uk [--json]
  python -m fecosr_jax.data.stats --format=ml100k_regions --path=../shared/data/ml-100k
  python -m fecosr_jax.data.stats --format=synthetic --num_markets=8 --seed=0

Counts are after loading (exact duplicate rows dropped unless --duplicates=keep, and k-core
when --kcore > 1), before any split. --json prints a
JSON list of {"market", "users", "items", "interactions"} objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from fecosr_jax import errors
from fecosr_jax.data import synthetic
from fecosr_jax.data.market import DUPLICATES
from fecosr_jax.data.sources import FORMATS, load_source
from fecosr_jax.data.summary import format_tables, market_stats

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Data source format.")
_PATH = flags.DEFINE_string("path", None, "Data folder (not needed for synthetic).")
_MARKETS = flags.DEFINE_list("markets", None, "Markets to load (default: all).")
_KCORE = flags.DEFINE_integer("kcore", 0, "k-core filter each market when > 1.")
_DATASET = flags.DEFINE_string("dataset", "ml-100k", "RecBole dataset name (format recbole).")
_DUPLICATES = flags.DEFINE_enum(
    "duplicates",
    "drop",
    DUPLICATES,
    "Rows equal to an earlier row in every field: drop (counted in the log) or keep.",
)
_NUM_MARKETS = flags.DEFINE_integer("num_markets", 8, "Synthetic: number of markets.")
_SEED = flags.DEFINE_integer("seed", 0, "Synthetic: generator seed.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of tables.")


def main(argv: Sequence[str]) -> int:
    del argv
    if _FORMAT.value is None:
        return errors.report(errors.BadInput(f"--format is required, one of {FORMATS}"))
    try:
        markets = load_source(
            _FORMAT.value,
            _PATH.value,
            markets=_MARKETS.value,
            kcore=_KCORE.value,
            dataset=_DATASET.value,
            duplicates=_DUPLICATES.value,
            synthetic_config=synthetic.SyntheticConfig(
                num_markets=_NUM_MARKETS.value, seed=_SEED.value
            ),
        )
    except Exception as e:  # one line: exit 2 names the file or field to fix
        return errors.report(e, verbosity=flags.FLAGS.verbosity, prog="fecosr_jax.data.stats")
    if _JSON.value:
        print(json.dumps(market_stats(markets)))
    else:
        print(format_tables(markets))
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=errors.parse_flags)
