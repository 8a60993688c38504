"""CE and S²CE: the formulas of docs/design.md §2, and blockwise == dense."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fecosr_jax import losses
from fecosr_jax.data import summary

P, N, D, DS = 12, 37, 8, 6


def inputs(seed=0, n=N):
    k = jax.random.split(jax.random.key(seed), 5)
    hidden = jax.random.normal(k[0], (P, D))
    items = jax.random.normal(k[1], (n, D))
    semantics = jax.random.normal(k[2], (n, DS))
    mask = (jnp.arange(n) > 0) & (jnp.arange(n) < n - 3)  # 0 and the last 3 are padding
    targets = jax.random.randint(k[3], (P,), 1, n - 3).at[4].set(0)  # position 4 is padding
    return hidden, items, semantics, mask, targets


def test_alpha_zero_equals_optax_cross_entropy():
    hidden, items, semantics, mask, targets = inputs()
    logits = hidden @ items.T
    got = losses.s2ce_loss(logits, targets, semantics, mask, alpha=0.0, temperature=0.3)
    # optax over the catalogue only: drop padding columns entirely.
    cols = np.flatnonzero(np.asarray(mask))
    remap = {c: i for i, c in enumerate(cols)}
    t = jnp.asarray([remap.get(int(x), 0) for x in targets])
    want = optax.softmax_cross_entropy_with_integer_labels(logits[:, cols], t)
    want = jnp.where(targets > 0, want, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.ce_loss(logits, targets, mask), want, rtol=1e-6, atol=1e-6)
    assert got[4] == 0.0


def test_gradient_is_softmax_minus_soft_label():
    hidden, items, semantics, mask, targets = inputs(1)
    logits = hidden @ items.T
    alpha, tau = 0.4, 0.2
    grad = jax.grad(
        lambda z: losses.s2ce_loss(z, targets, semantics, mask, alpha=alpha, temperature=tau).sum()
    )(logits)
    # By hand: p = softmax over the catalogue, y = (1 - a) onehot + a q.
    z = np.where(mask, np.asarray(logits, np.float64), -np.inf)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s = np.asarray(semantics, np.float64)
    unit = s / np.linalg.norm(s, axis=1, keepdims=True)
    c = np.where(mask, unit[np.asarray(targets)] @ unit.T / tau, -np.inf)
    q = np.exp(c - c.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    y = (1 - alpha) * np.eye(N)[np.asarray(targets)] + alpha * q
    want = (p - y) * (np.asarray(targets) > 0)[:, None]
    np.testing.assert_allclose(grad, want, atol=1e-6)


def test_padding_items_get_zero_probability_and_zero_soft_label():
    hidden, items, semantics, mask, targets = inputs(2)
    q = losses.soft_labels(targets, semantics, mask, temperature=0.1)
    assert np.all(np.asarray(q)[:, ~np.asarray(mask)] == 0)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    # Huge logits on padding items change nothing.
    logits = hidden @ items.T
    spiked = logits.at[:, 0].set(1e6).at[:, N - 1].set(1e6)
    a = losses.s2ce_loss(logits, targets, semantics, mask, alpha=0.5, temperature=0.1)
    b = losses.s2ce_loss(spiked, targets, semantics, mask, alpha=0.5, temperature=0.1)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    grad = jax.grad(
        lambda z: losses.s2ce_loss(z, targets, semantics, mask, alpha=0.5, temperature=0.1).sum()
    )(spiked)
    assert np.all(np.asarray(grad)[:, ~np.asarray(mask)] == 0)


def test_soft_label_by_hand():
    # Three items: cos(s_t, s_1) = 1, cos(s_t, s_2) = 0; temperature 1 -> q = softmax([1, 0]).
    semantics = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    mask = jnp.array([False, True, True])
    q = losses.soft_labels(jnp.array([1]), semantics, mask, temperature=1.0)
    e = np.e / (np.e + 1)
    np.testing.assert_allclose(q, [[0.0, e, 1 - e]], rtol=1e-6)
    # S²CE with logits z = [_, 0, 0]: logsumexp = log 2, sum y z = 0.
    loss = losses.s2ce_loss(
        jnp.zeros((1, 3)), jnp.array([1]), semantics, mask, alpha=0.5, temperature=1.0
    )
    np.testing.assert_allclose(loss, [np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("n,block", [(37, 8), (37, 37), (37, 64), (40, 8)])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_blockwise_equals_dense(n, block, alpha):
    hidden, items, semantics, mask, targets = inputs(3, n)
    weights = jnp.linspace(0.5, 1.5, P)  # a non-uniform upstream gradient

    def dense(h, e):
        z = losses.s2ce_loss(h @ e.T, targets, semantics, mask, alpha=alpha, temperature=0.2)
        return z, jnp.sum(z * weights)

    def blockwise(h, e):
        z = losses.s2ce_loss_blockwise(
            h, e, targets, semantics, mask, alpha=alpha, temperature=0.2, block_size=block
        )
        return z, jnp.sum(z * weights)

    np.testing.assert_allclose(
        blockwise(hidden, items)[0], dense(hidden, items)[0], rtol=1e-5, atol=1e-5
    )
    gd = jax.grad(lambda h, e: dense(h, e)[1], argnums=(0, 1))(hidden, items)
    gb = jax.grad(lambda h, e: blockwise(h, e)[1], argnums=(0, 1))(hidden, items)
    for a, b in zip(gb, gd, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_blockwise_accumulates_in_fp32_for_bf16_inputs():
    hidden, items, semantics, mask, targets = inputs(4)
    h16, e16 = hidden.astype(jnp.bfloat16), items.astype(jnp.bfloat16)
    got = losses.s2ce_loss_blockwise(
        h16, e16, targets, semantics, mask, alpha=0.3, temperature=0.2, block_size=8
    )
    assert got.dtype == jnp.float32
    # Reference: the same bf16 values, computed densely in fp32.
    want = losses.s2ce_loss(
        h16.astype(jnp.float32) @ e16.astype(jnp.float32).T,
        targets,
        semantics,
        mask,
        alpha=0.3,
        temperature=0.2,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    gh, ge = jax.grad(
        lambda h, e: losses.s2ce_loss_blockwise(
            h, e, targets, semantics, mask, alpha=0.3, temperature=0.2, block_size=8
        ).sum(),
        argnums=(0, 1),
    )(h16, e16)
    assert gh.dtype == jnp.bfloat16 and ge.dtype == jnp.bfloat16


def test_soft_label_profile_by_hand():
    # Three orthogonal items at tau_s 0.5: q_t = e^2 / (e^2 + 2) on the target, the rest split.
    semantics = np.vstack([np.zeros(3), 2 * np.eye(3)])  # row 0 = padding
    profile = summary.soft_label_profile(semantics, temperature=0.5)
    q_t = np.e**2 / (np.e**2 + 2)
    q_o = 1 / (np.e**2 + 2)
    entropy = -(q_t * np.log(q_t) + 2 * q_o * np.log(q_o))
    assert profile["target_mass"] == pytest.approx(q_t)
    assert profile["effective_items"] == pytest.approx(np.exp(entropy))
    assert profile["targets"] == 3
    # Identical vectors: the soft label is uniform, whatever tau_s.
    same = summary.soft_label_profile(np.vstack([np.zeros(2), np.ones((4, 2))]), 0.1)
    assert same["target_mass"] == pytest.approx(0.25)
    assert same["effective_items"] == pytest.approx(4.0)


@pytest.mark.parametrize("max_targets", [5, 1024])
def test_soft_label_profile_equals_the_loss_soft_labels(monkeypatch, max_targets):
    """The profile is measured on the same q as losses.soft_labels (all targets, or evenly
    spaced ones beyond MAX_PROFILE_TARGETS)."""
    monkeypatch.setattr(summary, "MAX_PROFILE_TARGETS", max_targets)
    n = 30
    semantics = np.array(jax.random.normal(jax.random.key(3), (n + 1, DS)))
    semantics[0] = 0.0
    mask = jnp.arange(n + 1) > 0
    targets = np.unique(np.linspace(0, n - 1, min(n, max_targets)).round().astype(int)) + 1
    q = np.asarray(losses.soft_labels(jnp.asarray(targets), semantics, mask, temperature=0.2))
    q = q[:, 1:]  # [T, N] over the catalogue
    mass = q[np.arange(len(targets)), targets - 1]
    effective = np.exp(-np.sum(q * np.log(q), axis=-1))
    profile = summary.soft_label_profile(semantics, temperature=0.2, block=4)
    assert profile["targets"] == len(targets)
    assert profile["target_mass"] == pytest.approx(mass.mean(), rel=1e-5)
    assert profile["effective_items"] == pytest.approx(np.median(effective), rel=1e-5)
