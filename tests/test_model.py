"""The shared model: causality, padding, catalogue masking, zero-initialised item IDs, dropout
with its rate as data."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fecosr_jax import model as model_lib
from fecosr_jax.model import ModelConfig, SequenceModel, init_params, keep_probability, scores

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


def test_bad_norm_init_and_dropout_are_named():
    with pytest.raises(ValueError, match="norm='mid'"):
        ModelConfig(norm="mid")
    with pytest.raises(ValueError, match="item_id_std=-1"):
        ModelConfig(item_id_std=-1)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"config.model.dropout={rate}: expected 0 <="):
            ModelConfig(dropout=rate)


class _Twice(nn.Module):
    """Flax's dropout and the model's, each under the name "d" (so the same RNG stream)."""

    flax_dropout: bool

    @nn.compact
    def __call__(self, x, rate, keep):
        if self.flax_dropout:
            return nn.Dropout(rate, deterministic=False, name="d")(x)
        return model_lib.Dropout(name="d")(x, keep, train=True)


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.37])
def test_dropout_and_attention_dropout_are_flaxs_bit_for_bit(rate):
    # The model's dropout takes its keep probability as an argument (a traced per-run value,
    # or 1 - rate as a constant for a run alone); given the constant it draws Flax's bits and
    # computes Flax's arithmetic. (Traced, XLA cannot fold it: next test.)
    x = jax.random.normal(jax.random.key(0), (4, 6, 8))
    rngs = {"dropout": jax.random.key(1)}
    ours = jax.jit(lambda x: _Twice(False).apply({}, x, rate, 1.0 - rate, rngs=rngs))(x)
    flax = jax.jit(lambda x: _Twice(True).apply({}, x, rate, None, rngs=rngs))(x)
    np.testing.assert_array_equal(ours, flax)
    assert 0 < float(jnp.mean(ours == 0)) < 2 * rate  # it drops something
    # Attention: Flax's weights, Flax's dropout of them (one mask over batch and heads).
    q, k, v = (jax.random.normal(jax.random.key(i), (3, 5, 2, 4)) for i in (2, 3, 4))
    mask = nn.make_causal_mask(jnp.ones((3, 5)))
    key = jax.random.key(5)
    ours = jax.jit(lambda: model_lib._attention(q, k, v, mask, key, keep=1.0 - rate))()
    flax = jax.jit(
        lambda: nn.dot_product_attention(q, k, v, mask=mask, dropout_rng=key, dropout_rate=rate)
    )()
    np.testing.assert_array_equal(ours, flax)
    plain = nn.dot_product_attention(q, k, v, mask=mask)
    assert np.abs(np.asarray(ours - plain)).max() > 1e-2


def test_the_dropout_rate_as_data_is_the_rate_as_a_constant_up_to_rounding():
    cfg = dataclasses.replace(CFG, dropout=0.2)
    _, params, semantics = setup(cfg)
    x = jnp.array([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    traces = []

    def loss(cfg, params, keep):
        traces.append(1)
        h, items = SequenceModel(cfg).apply(
            {"params": params}, x, semantics, train=True, rngs={"dropout": jax.random.key(7)},
            dropout_keep=keep,
        )  # fmt: skip
        return jnp.sum(h**2) + jnp.sum(items)

    as_data = jax.jit(jax.value_and_grad(functools.partial(loss, cfg)))
    for rate in (0.2, 0.35):
        constant = jax.jit(  # compiled: eagerly, each op would compile on its own
            jax.value_and_grad(functools.partial(loss, dataclasses.replace(cfg, dropout=rate)))
        )(params, None)
        got = as_data(params, keep_probability(rate))
        # XLA folds a constant rate into the products around it: rounding apart, not more.
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(constant), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert len(traces) == 3  # one compiled program for both rates (plus the two constants)
    # the rate is used: 0.2 and 0.35 give different losses
    assert abs(float(as_data(params, keep_probability(0.2))[0] - got[0])) > 1e-2
    # in evaluation (train=False) there is no dropout, whatever the rate
    h1, _ = SequenceModel(cfg).apply({"params": params}, x, semantics, dropout_keep=0.5)
    h2, _ = SequenceModel(cfg).apply({"params": params}, x, semantics)
    np.testing.assert_array_equal(h1, h2)
