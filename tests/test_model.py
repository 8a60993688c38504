"""The shared model: causality, padding, catalogue masking, zero-initialised item IDs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fecosr_jax.model import ModelConfig, SequenceModel, init_params, scores

CFG = ModelConfig(hidden=16, num_layers=2, num_heads=2, ffn_dim=32, max_len=6, num_experts=3)


def setup(cfg=CFG):
    params = init_params(cfg, jax.random.key(0), 5)
    semantics = jax.random.normal(jax.random.key(1), (10, 5))
    return SequenceModel(cfg), params, semantics


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_no_position_sees_the_future(norm):
    model, params, semantics = setup(dataclasses.replace(CFG, norm=norm))
    a = jnp.array([[0, 0, 3, 4, 5, 6]])
    b = a.at[0, 5].set(9)
    ha, _ = model.apply({"params": params}, a, semantics)
    hb, _ = model.apply({"params": params}, b, semantics)
    np.testing.assert_allclose(ha[0, :5], hb[0, :5], atol=1e-6)
    assert np.abs(np.asarray(ha[0, 5] - hb[0, 5])).max() > 1e-3


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_positions_do_not_affect_items(norm):
    model, params, semantics = setup(dataclasses.replace(CFG, norm=norm))
    # Left padding content is ignored: positions 0-1 hold padding in both.
    x = jnp.array([[0, 0, 3, 4, 5, 6]])
    h1, _ = model.apply({"params": params}, x, semantics)
    h2, _ = model.apply({"params": params}, x, semantics.at[0].set(100.0))  # padding item row
    np.testing.assert_allclose(h1[0, 2:], h2[0, 2:], atol=1e-5)


def test_padding_items_never_win():
    model, params, semantics = setup()
    h, items = model.apply({"params": params}, jnp.array([[0, 0, 3, 4, 5, 6]]), semantics)
    mask = jnp.arange(10) > 0
    mask = mask.at[8:].set(False)
    s = scores(CFG, h[:, -1], items.at[8].set(1e3 * h[0, -1]), mask)
    assert np.isneginf(np.asarray(s)[0, [0, 8, 9]]).all()
    assert int(jnp.argmax(s[0])) not in (0, 8, 9)


def test_zero_initialised_item_ids_start_at_the_text_model():
    cfg_ids = ModelConfig(**{**CFG.__dict__, "num_item_ids": 10})
    model, params, semantics = setup()
    model_ids = SequenceModel(cfg_ids)
    params_ids = init_params(cfg_ids, jax.random.key(0), 5)
    assert np.all(np.asarray(params_ids["item_ids"]["embedding"]) == 0)
    shared = {k: v for k, v in params_ids.items() if k != "item_ids"}
    x = jnp.array([[0, 1, 2, 3, 4, 5]])
    h1, e1 = model.apply({"params": shared}, x, semantics)
    h2, e2 = model_ids.apply({"params": params_ids}, x, semantics)
    np.testing.assert_allclose(e1, e2, atol=1e-6)
    np.testing.assert_allclose(h1, h2, atol=1e-6)


def test_post_ln_blocks_end_in_a_layer_norm():
    post = dataclasses.replace(CFG, norm="post")
    model, params, semantics = setup(post)
    # The pre-LN parameters less the final norm (each post-LN block ends in its own).
    pre_params = init_params(CFG, jax.random.key(0), 5)
    del pre_params["final_norm"]
    assert jax.tree.structure(params) == jax.tree.structure(pre_params)
    x = jnp.array([[0, 0, 3, 4, 5, 6]])
    h, _ = model.apply({"params": params}, x, semantics)
    # A freshly initialised LayerNorm (scale 1, bias 0) ends the last block: every real
    # position is normalised.
    real = np.asarray(h[0, 2:])
    np.testing.assert_allclose(real.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(real.std(-1), 1.0, atol=1e-3)
    # The same weights in pre-LN blocks (plus a final norm) give other states.
    pre_params["final_norm"] = params["block_0"]["ln_ffn"]
    h_pre, _ = SequenceModel(CFG).apply({"params": pre_params | params}, x, semantics)
    assert np.abs(np.asarray(h_pre - h)).max() > 1e-2


def test_bad_norm_and_init_are_named():
    with pytest.raises(ValueError, match="norm='mid'"):
        ModelConfig(norm="mid")
    with pytest.raises(ValueError, match="item_id_std=-1"):
        ModelConfig(item_id_std=-1)
