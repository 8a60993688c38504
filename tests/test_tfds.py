"""The TFDS builders (array_record, read without TensorFlow) match the direct loaders."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from fecosr_jax.data import synthetic, tfds_builders, xmrec  # noqa: E402


def assert_same_markets(got, want):
    assert [m.name for m in got] == [m.name for m in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.user_ids, b.user_ids)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.items, b.items)


def test_xmrec_builder_matches_loader(xmrec_dir, tmp_path):
    config = tfds_builders.XmrecConfig(name="de_fr", markets=("de", "fr"))
    builder = tfds_builders.XmrecMarkets(
        config=config, data_dir=tmp_path, file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(xmrec_dir))
    )
    source = tfds.data_source("xmrec_markets/de_fr", data_dir=tmp_path)
    assert_same_markets(
        tfds_builders.markets_from_source(source), xmrec.load_markets(xmrec_dir, ["de", "fr"])
    )


def test_synthetic_builder_matches_generator(tmp_path):
    gen = synthetic.SyntheticConfig(num_markets=2, users_per_market=40, items_per_market=50)
    config = tfds_builders.SyntheticMarketsConfig(name="tiny", generator=gen)
    builder = tfds_builders.SyntheticMarkets(
        config=config, data_dir=tmp_path, file_format="array_record"
    )
    builder.download_and_prepare()
    source = builder.as_data_source()
    assert_same_markets(tfds_builders.markets_from_source(source), synthetic.synthetic_markets(gen))
