"""TFDS builders for cross-market data, in array_record format (no TensorFlow needed).

Each market is a split; each example is one user's time-ordered sequence:
  {"user_id": str, "item_ids": [n] str (original ids, e.g. ASINs), "items": [n] int32 (local
   indices 1..N in sorted-id order, as the direct loaders give), "timestamps": [n] float64}.

  import tensorflow_datasets as tfds
  from fecosr_jax.data import tfds_builders  # registers the builders
  builder = tfds_builders.XmrecMarkets(data_dir=DATA_DIR, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="../shared/data/xmrec_electronics_5core"))
  source = tfds.data_source("xmrec_markets", data_dir=DATA_DIR)   # random access, no TF
  markets = tfds_builders.markets_from_source(source)

Records are stored in TFDS's (hashed) key order; `markets_from_source` restores the loaders'
order (users sorted by id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fecosr_jax.data import synthetic, xmrec
from fecosr_jax.data.market import Interactions, Market, kcore_filter, market_from_interactions

_DESCRIPTION = "One split per market; one example per user: the time-ordered item sequence."


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "user_id": tfds.features.Text(),
            "item_ids": tfds.features.Sequence(tfds.features.Text()),
            "items": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float64),
        }
    )


def _examples(market: Market, times: np.ndarray) -> Iterator[tuple[str, dict]]:
    for u, user in enumerate(market.user_ids.tolist()):
        seq = market.sequence(u)
        start, end = market.offsets[u], market.offsets[u + 1]
        yield (
            user,
            {
                "user_id": user,
                "item_ids": market.item_ids[seq - 1].tolist(),
                "items": seq.astype(np.int32),
                "timestamps": times[start:end],
            },
        )


@dataclasses.dataclass
class XmrecConfig(tfds.core.BuilderConfig):
    markets: tuple[str, ...] = ("ca", "de", "fr", "uk")
    kcore: int = 0


class XmrecMarkets(tfds.core.GeneratorBasedBuilder):
    """XMRec ratings, one split per market, read from a manual_dir of ratings files."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [XmrecConfig(name="electronics_5core")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one ratings file per market in manual_dir, e.g. ca_5core.txt (FOREC / "
        "efficient-xmrec 5-core files) or the XMRec release's ratings_<market>_<category>.txt.gz."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=_DESCRIPTION, features=_features())

    def _split_generators(self, dl_manager):
        splits = {}
        for name in self.builder_config.markets:
            path = xmrec.ratings_path(dl_manager.manual_dir, name)
            log = kcore_filter(xmrec.load_ratings(path), self.builder_config.kcore)
            market = market_from_interactions(name, log)
            splits[name] = self._generate_examples(market, _sorted_times(market, log))
        return splits

    def _generate_examples(self, market: Market, times: np.ndarray):
        yield from _examples(market, times)


def _sorted_times(market: Market, log: Interactions) -> np.ndarray:
    """[R] the log's times aligned with market.items (users by id, then time, then file)."""
    user_index = np.searchsorted(market.user_ids, log.users)
    order = np.lexsort((np.arange(len(log)), log.times, user_index))
    return log.times[order]


@dataclasses.dataclass
class SyntheticMarketsConfig(tfds.core.BuilderConfig):
    generator: synthetic.SyntheticConfig = dataclasses.field(
        default_factory=synthetic.SyntheticConfig
    )


class SyntheticMarkets(tfds.core.GeneratorBasedBuilder):
    """Synthetic markets (fecosr_jax.data.synthetic), one split per market."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticMarketsConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=_DESCRIPTION, features=_features())

    def _split_generators(self, dl_manager):
        markets = synthetic.synthetic_markets(self.builder_config.generator)
        return {m.name: self._generate_examples(m) for m in markets}

    def _generate_examples(self, market: Market):
        times = np.concatenate([np.arange(n) for n in market.lengths]).astype(np.float64)
        yield from _examples(market, times)


def markets_from_source(source: Mapping[str, Sequence[dict]]) -> list[Market]:
    """Rebuilds Markets (sequences and catalogues, no text/semantics) from a TFDS data source.

    Args:
      source: split name -> random-access records, as `tfds.data_source(...)` returns.
    """
    out = []
    for name in sorted(source):
        records = sorted(
            (source[name][i] for i in range(len(source[name]))), key=lambda r: _text(r["user_id"])
        )
        users = np.asarray([_text(r["user_id"]) for r in records])
        item_ids = np.unique(np.asarray([_text(i) for r in records for i in r["item_ids"]]))
        seqs = [np.searchsorted(item_ids, [_text(i) for i in r["item_ids"]]) + 1 for r in records]
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        out.append(
            Market(
                name=name,
                item_ids=item_ids,
                user_ids=users,
                offsets=offsets,
                items=np.concatenate(seqs).astype(np.int32),
            )
        )
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
