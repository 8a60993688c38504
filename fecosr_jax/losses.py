"""CE and the Semantic Soft Cross-Entropy (S²CE), as pure functions (docs/design.md §2).

For one position with target t, logits z over the market's catalogue I_m and p = softmax(z):

    q_i   = softmax_{i in I_m}( cos(s_t, s_i) / tau_s )        semantic soft label
    y     = (1 - alpha) * onehot(t) + alpha * q
    S²CE  = -sum_i y_i log p_i  =  logsumexp(z) - sum_i y_i z_i

alpha = 0 is exactly CE, and dS²CE/dz = p - y. Items outside the catalogue (item_mask False,
always including index 0) get zero probability and zero soft label. Positions whose target is
0 (padding) have loss 0. Every function returns the per-position loss with the shape of
`targets`; reductions are the caller's.

`s2ce_loss_blockwise` computes the same values from hidden states and item embeddings without
materialising the [positions, items] matrix: one pass over item blocks keeps an online
logsumexp of z, one of s/tau_s, and a rescaled running sum of e^{s_i/tau_s} z_i; a custom VJP
recomputes each block in the backward pass. It accumulates in fp32 whatever the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
_EPS = 1e-8


def _masked_logsumexp(x: Array, mask: Array) -> Array:
    """logsumexp over the last axis of x where mask; -inf never enters a product."""
    x = jnp.where(mask, x, -jnp.inf)
    return jax.nn.logsumexp(x, axis=-1)


def normalize(x: Array) -> Array:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def ce_loss(logits: Array, targets: Array, item_mask: Array) -> Array:
    """Cross-entropy over the market's catalogue.

    Args:
      logits: [..., N] scores.
      targets: [...] int item indices; 0 = padding position (loss 0).
      item_mask: [N] bool, False for padding items (including index 0).

    Returns:
      [...] per-position loss.
    """
    logits = logits.astype(jnp.float32)
    lse = _masked_logsumexp(logits, item_mask)
    z_t = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets > 0, lse - z_t, 0.0)


def soft_labels(
    targets: Array, semantics: Array, item_mask: Array, *, temperature: float | Array
) -> Array:
    """q [..., N]: softmax over the catalogue of cos(s_t, s_i) / temperature."""
    unit = normalize(semantics)  # [N, d_s]
    sim = unit[targets] @ unit.T  # [..., N]
    sim = jnp.where(item_mask, sim / temperature, -jnp.inf)
    return jax.nn.softmax(sim, axis=-1)


def s2ce_loss(
    logits: Array,
    targets: Array,
    semantics: Array,
    item_mask: Array,
    *,
    alpha: float | Array,
    temperature: float | Array,
) -> Array:
    """Semantic Soft Cross-Entropy (dense form).

    Args:
      logits: [..., N] scores z.
      targets: [...] int item indices; 0 = padding position (loss 0).
      semantics: [N, d_s] the catalogue's semantic vectors (cosine similarity inside).
      item_mask: [N] bool, False for padding items (including index 0).
      alpha: weight of the semantic soft label, in [0, 1]; 0 = CE.
      temperature: tau_s of the soft label.

    Returns:
      [...] per-position loss.
    """
    logits = logits.astype(jnp.float32)
    y = (1.0 - alpha) * jax.nn.one_hot(targets, logits.shape[-1]) + alpha * soft_labels(
        targets, semantics, item_mask, temperature=temperature
    )
    lse = _masked_logsumexp(logits, item_mask)
    loss = lse - jnp.sum(jnp.where(item_mask, y * logits, 0.0), axis=-1)
    return jnp.where(targets > 0, loss, 0.0)


# ----------------------------------------------------------------------------- blockwise


def _pad_items(x: Array, size: int) -> Array:
    pad = size - x.shape[0]
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


def _blocks(item_embeddings, semantics, item_mask, block_size):
    """Item arrays padded to a multiple of block_size and reshaped to [blocks, block, ...]."""
    n = item_embeddings.shape[0]
    nb = -(-n // block_size)
    size = nb * block_size
    e = _pad_items(item_embeddings, size).reshape(nb, block_size, -1)
    s = _pad_items(normalize(semantics), size).reshape(nb, block_size, -1)
    m = _pad_items(item_mask, size).reshape(nb, block_size)
    return e, s, m


def _block_scores(hidden, unit_t, e_blk, s_blk, m_blk, temperature):
    """z and c = cos/tau_s for one item block, fp32, -inf outside the catalogue."""
    z = jnp.einsum("pd,nd->pn", hidden, e_blk, preferred_element_type=jnp.float32)
    c = jnp.einsum("pd,nd->pn", unit_t, s_blk, preferred_element_type=jnp.float32) / temperature
    z = jnp.where(m_blk[None, :], z, -jnp.inf)
    c = jnp.where(m_blk[None, :], c, -jnp.inf)
    return z, c


def _online_update(m, s, x):
    """Online logsumexp step over block x [P, B]: new running max and sum, the factor that
    rescales earlier sums, and exp(x - new max)."""
    m_new = jnp.maximum(m, jnp.max(x, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    scale = jnp.exp(m - m_safe)
    ex = jnp.exp(x - m_safe[:, None])
    return m_new, s * scale + jnp.sum(ex, axis=-1), scale, ex


def _blockwise_forward(
    hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, block_size
):
    p = hidden.shape[0]
    e, s, msk = _blocks(item_embeddings, semantics, item_mask, block_size)
    unit_t = normalize(semantics)[targets]  # [P, d_s]
    neg = jnp.full((p,), -jnp.inf, jnp.float32)
    zero = jnp.zeros((p,), jnp.float32)

    def body(carry, blk):
        mz, sz, mc, sc, tz = carry
        e_blk, s_blk, m_blk = blk
        z, c = _block_scores(hidden, unit_t, e_blk, s_blk, m_blk, temperature)
        mz, sz, _, _ = _online_update(mz, sz, z)
        mc, sc, scale, ex = _online_update(mc, sc, c)
        tz = tz * scale + jnp.sum(jnp.where(m_blk[None, :], ex * z, 0.0), axis=-1)
        return (mz, sz, mc, sc, tz), None

    (mz, sz, mc, sc, tz), _ = jax.lax.scan(body, (neg, zero, neg, zero, zero), (e, s, msk))
    lse_z = mz + jnp.log(sz)
    lse_c = mc + jnp.log(sc)
    qz = tz / sc  # sum_i q_i z_i
    z_t = jnp.einsum(
        "pd,pd->p", hidden, item_embeddings[targets], preferred_element_type=jnp.float32
    )
    loss = lse_z - (1.0 - alpha) * z_t - alpha * qz
    valid = targets > 0
    return jnp.where(valid, loss, 0.0), (lse_z, lse_c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _s2ce_blockwise(
    hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, block_size
):
    return _blockwise_forward(
        hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, block_size
    )[0]


def _s2ce_blockwise_fwd(
    hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, block_size
):
    loss, (lse_z, lse_c) = _blockwise_forward(
        hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, block_size
    )
    res = (hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature)
    return loss, (*res, lse_z, lse_c)


def _s2ce_blockwise_bwd(block_size, res, g):
    hidden, item_embeddings, targets, semantics, item_mask, alpha, temperature, lse_z, lse_c = res
    n = item_embeddings.shape[0]
    g = jnp.where(targets > 0, g, 0.0).astype(jnp.float32)  # [P]
    e, s, msk = _blocks(item_embeddings, semantics, item_mask, block_size)
    unit_t = normalize(semantics)[targets]
    h32 = hidden.astype(jnp.float32)

    def body(dh, blk):
        e_blk, s_blk, m_blk = blk
        z, c = _block_scores(hidden, unit_t, e_blk, s_blk, m_blk, temperature)
        # dL/dz_i = p_i - alpha q_i (the one-hot part is added after the loop).
        dz = jnp.exp(z - lse_z[:, None]) - alpha * jnp.exp(c - lse_c[:, None])
        dz = jnp.where(m_blk[None, :], dz, 0.0) * g[:, None]
        dh = dh + dz @ e_blk.astype(jnp.float32)
        de_blk = dz.T @ h32
        return dh, de_blk

    dh, de = jax.lax.scan(body, jnp.zeros_like(h32), (e, s, msk))
    de = de.reshape(-1, hidden.shape[1])[:n]
    onehot_w = (1.0 - alpha) * g  # d(-(1-alpha) z_t)
    dh = dh - onehot_w[:, None] * item_embeddings[targets].astype(jnp.float32)
    de = de.at[targets].add(-onehot_w[:, None] * h32)
    return (dh.astype(hidden.dtype), de.astype(item_embeddings.dtype), *(None,) * 5)


_s2ce_blockwise.defvjp(_s2ce_blockwise_fwd, _s2ce_blockwise_bwd)


def s2ce_loss_blockwise(
    hidden: Array,
    item_embeddings: Array,
    targets: Array,
    semantics: Array,
    item_mask: Array,
    *,
    alpha: float | Array,
    temperature: float | Array,
    block_size: int = 4096,
) -> Array:
    """S²CE of `hidden @ item_embeddings.T` without the [P, N] matrix.

    Args:
      hidden: [P, d] hidden states (fold any score temperature into them).
      item_embeddings: [N, d].
      targets: [P] int; 0 = padding position (loss 0).
      semantics: [N, d_s] (treated as data: no gradient flows into it).
      item_mask: [N] bool.
      alpha, temperature: as in `s2ce_loss` (floats or float32 arrays: no gradient).
      block_size: items per block (at most N); N need not be a multiple of it.

    Returns:
      [P] per-position loss, fp32. Memory O(P * block_size + N * d).
    """
    return _s2ce_blockwise(
        hidden,
        item_embeddings,
        targets,
        semantics,
        item_mask,
        jnp.asarray(alpha, jnp.float32),
        jnp.asarray(temperature, jnp.float32),
        min(int(block_size), item_embeddings.shape[0]),  # a small catalogue: one block
    )
