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


class _StreamOf(nn.Module):
    """The key Flax's RNG stream "dropout" gives the module named "d" (nn.Dropout's key)."""

    @nn.compact
    def __call__(self):
        return _Key(name="d")()


class _Key(nn.Module):
    @nn.compact
    def __call__(self):
        return self.make_rng("dropout")


class _Ours(nn.Module):
    @nn.compact
    def __call__(self, x, keep):
        return model_lib.Dropout(name="d")(x, keep, train=True)


def _mask(key, keep, shape):
    """keep_mask by hand in numpy: the 16-bit halves (low first) of the words of
    jax.random.bits, kept below round(keep * 2^16); q = that threshold / 2^16."""
    n = int(np.prod(shape))
    words = np.asarray(jax.random.bits(key, (-(-n // 2),), jnp.uint32))
    halves = words.astype("<u4").view("<u2")[:n].reshape(shape)
    threshold = round(float(np.float32(keep)) * 2**16)
    return halves < threshold, np.float32(threshold / 2**16)


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.37])
def test_dropout_and_attention_dropout_use_16_bit_uniforms_from_flaxs_stream(rate):
    # Each element's uniform is 16 bits, two per 32-bit word of Flax's stream for the module
    # (half the words of jax.random.bernoulli: the CPU's cost), and dropout scales by the
    # mask's own keep probability q (within 2^-17 of 1 - rate), so it stays unbiased.
    keep = 1.0 - rate
    x = jax.random.normal(jax.random.key(0), (4, 6, 9))  # 216 elements; 3 x 5 x 5 below: odd
    rngs = {"dropout": jax.random.key(1)}
    ours = jax.jit(lambda x: _Ours().apply({}, x, keep, rngs=rngs))(x)
    mask, q = _mask(_StreamOf().apply({}, rngs=rngs), keep, x.shape)
    assert abs(float(q) - keep) <= 2**-17 and float(q) != np.float32(keep)
    np.testing.assert_allclose(ours, np.where(mask, np.asarray(x) / q, 0.0), rtol=1e-6)
    assert 0 < float(jnp.mean(ours == 0)) < 2 * rate  # it drops something
    # Attention: Flax's weights, then one mask over batch and heads, as Flax places it.
    qs, k, v = (jax.random.normal(jax.random.key(i), (3, 5, 2, 4)) for i in (2, 3, 4))
    causal = nn.make_causal_mask(jnp.ones((3, 5)))
    key = jax.random.key(5)
    got = jax.jit(lambda: model_lib._attention(qs, k, v, causal, key, keep=keep))()
    weights = np.asarray(nn.dot_product_attention_weights(qs, k, mask=causal))
    mask, q = _mask(key, keep, (1, 1, 5, 5))
    want = np.einsum("...hqk,...khd->...qhd", weights * mask / q, np.asarray(v))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = nn.dot_product_attention(qs, k, v, mask=causal)
    assert np.abs(np.asarray(got - plain)).max() > 1e-2


def test_dropout_keeps_at_its_rate_and_is_unbiased():
    ones = jnp.ones((1000, 999))  # an odd count: the last word's high half unused
    for keep in (0.8, 0.5, 0.9):
        out = _Ours().apply({}, ones, keep, rngs={"dropout": jax.random.key(3)})
        kept = float(jnp.mean(out > 0))
        sigma = (keep * (1 - keep) / ones.size) ** 0.5
        assert abs(kept - keep) < 4 * sigma
        assert abs(float(jnp.mean(out)) - 1.0) < 4 * sigma / keep  # E[out] = 1
    # keep 1: nothing dropped, nothing scaled
    np.testing.assert_array_equal(
        _Ours().apply({}, ones, 1.0, rngs={"dropout": jax.random.key(3)}), ones
    )


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
        constant = jax.value_and_grad(loss, argnums=1)(
            dataclasses.replace(cfg, dropout=rate), params, None
        )
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
