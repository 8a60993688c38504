"""The shared sequence model (docs/design.md §2): item adaptor + SASRec-style causal Transformer.

Item representation e_i = A(s_i) (+ an optional item-ID embedding): A is a UniSRec-style
mixture of parametric-whitening experts, x -> sum_e g_e(x) W_e (x - b_e), with a softmax gate
on x. No item-ID parameters by default, so the model is catalogue-agnostic and every parameter
is shared by all markets. The user state h_t is the Transformer's output at position t;
scores over a market's catalogue are z_i = <h_t, e_i> / tau, padding items masked to -inf.

Flax Linen used only through init/apply: parameters are plain pytrees, which is what a
stacked market axis wants.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fecosr_jax.errors import ConfigError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the shared model.

    Attributes:
      hidden: d, the model width.
      num_layers, num_heads: Transformer blocks and attention heads.
      ffn_dim: inner width of each block's feed-forward layer.
      dropout: dropout rate (embeddings, attention, feed-forward), in [0, 1). Zero or not
        is the program's; the rate itself can also come as data (`keep_probability`), so runs
        that differ only in it share compiled programs.
      max_len: L, the longest input sequence (learned positions).
      num_experts: experts in the item adaptor's mixture.
      num_item_ids: size of an item-ID embedding table added to A(s_i) (N + 1 for a catalogue
        of N items); 0 = none (the catalogue-agnostic model).
      item_id_init: "zeros" (stage 2: fine-tuning starts exactly at the pretrained model) or
        "normal" (ID-only models trained from scratch).
      item_id_std: standard deviation of the "normal" item-ID init; 0 = hidden ** -0.5.
      norm: "pre" (x + f(LN(x)), a final LayerNorm) or "post" (LN(x + f(x)), as the original
        Transformer, SASRec and RecBole).
      adapter_dim: width of a bottleneck adapter after each block's feed-forward layer
        (up-projection zero-initialised); 0 = none.
      use_text: item representations include A(s_i); False = ID-only (SASRec), which needs
        num_item_ids.
      score_temperature: tau in z_i = <h, e_i> / tau.
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32 and losses
        accumulate in float32.
    """

    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.2
    max_len: int = 50
    num_experts: int = 8
    num_item_ids: int = 0
    item_id_init: str = "zeros"
    item_id_std: float = 0.0
    norm: str = "pre"
    adapter_dim: int = 0
    use_text: bool = True
    score_temperature: float = 1.0
    dtype: str = "float32"

    def __post_init__(self):
        if not self.use_text and not self.num_item_ids:
            raise ConfigError("an ID-only model (use_text=False) needs num_item_ids > 0")
        if self.item_id_init not in ("zeros", "normal"):
            raise ConfigError(
                f"config.model.item_id_init={self.item_id_init!r}: expected zeros or normal"
            )
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"config.model.norm={self.norm!r}: expected pre or post")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config.model.dropout={self.dropout}: expected 0 <= dropout < 1")
        if self.item_id_std < 0:
            raise ConfigError(f"config.model.item_id_std={self.item_id_std}: expected >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"config.model.dtype={self.dtype!r}: expected float32 or bfloat16")


def keep_probability(rate: float) -> np.float32:
    """The keep probability of dropout rate `rate` as data: 1 - rate in double precision, then
    float32, the very number nn.Dropout's arithmetic uses (as data XLA cannot fold it into
    the products around it, so results agree with the constant's up to rounding)."""
    return np.float32(1.0 - float(rate))


class Dropout(nn.Module):
    """nn.Dropout with the keep probability an argument (a Python float, or a traced float32
    per-run value): the same random bits, from the same RNG stream (Flax derives it from the
    module's path, and this module is auto-named Dropout_i as nn.Dropout is), and the same
    arithmetic. `keep` None: no dropout (rate 0, a structure of the program)."""

    @nn.compact
    def __call__(self, x: Array, keep, *, train: bool) -> Array:
        if keep is None or not train:
            return x
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def _attention(
    query, key, value, mask=None, dropout_rng=None, broadcast_dropout=True,
    deterministic=False, dtype=None, precision=None, *, keep,
):  # fmt: skip
    """nn.dot_product_attention with the keep probability of its dropout given apart (for
    `keep` traced): Flax's attention weights, then Flax's dropout of them (one mask over
    batch and heads), bits and arithmetic unchanged."""
    weights = nn.dot_product_attention_weights(
        query, key, mask=mask, deterministic=True, dtype=dtype, precision=precision
    )
    if not deterministic and keep is not None:
        shape = weights.shape
        if broadcast_dropout:
            shape = (1,) * (key.ndim - 2) + shape[-2:]
        kept = jax.random.bernoulli(dropout_rng, keep, shape)
        weights = weights * (kept.astype(weights.dtype) / jnp.asarray(keep, weights.dtype))
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


class ItemAdaptor(nn.Module):
    """Mixture of parametric-whitening experts: [..., d_s] -> [..., d]."""

    hidden: int
    num_experts: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array, keep, *, train: bool) -> Array:
        d_s = x.shape[-1]
        x = Dropout()(x.astype(self.dtype), keep, train=train)
        bias = self.param("bias", nn.initializers.zeros, (self.num_experts, d_s))
        weight = self.param(
            "weight", nn.initializers.lecun_normal(), (self.num_experts, d_s, self.hidden)
        )
        # (x - b_e) W_e = x W_e - b_e W_e: one [.., d_s] x [d_s, E d] product for all experts.
        weight, bias = weight.astype(self.dtype), bias.astype(self.dtype)
        flat = jnp.transpose(weight, (1, 0, 2)).reshape(d_s, self.num_experts * self.hidden)
        experts = (x @ flat).reshape(*x.shape[:-1], self.num_experts, self.hidden)
        experts = experts - jnp.einsum("es,esd->ed", bias, weight)
        gate = nn.Dense(self.num_experts, use_bias=False, dtype=self.dtype, name="gate")(x)
        gate = jax.nn.softmax(gate.astype(jnp.float32)).astype(self.dtype)
        return jnp.einsum("...e,...ed->...d", gate, experts)


class Block(nn.Module):
    """Transformer block. Pre-LN: x + Attn(LN(x)), then x + FFN(LN(x)). Post-LN:
    LN(x + Attn(x)), then LN(x + FFN(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, keep, *, train: bool) -> Array:
        c = self.config
        pre = c.norm == "pre"
        ln_attn = nn.LayerNorm(dtype=c.dtype, name="ln_attn")
        ln_ffn = nn.LayerNorm(dtype=c.dtype, name="ln_ffn")
        y = ln_attn(x) if pre else x
        y = nn.MultiHeadDotProductAttention(
            num_heads=c.num_heads,
            dropout_rate=c.dropout,  # > 0: Flax draws the attention's dropout key
            deterministic=not train,
            dtype=c.dtype,
            attention_fn=functools.partial(_attention, keep=keep),
            name="attn",
        )(y, y, mask=mask)
        x = x + Dropout()(y, keep, train=train)
        if not pre:
            x = ln_attn(x)
        y = ln_ffn(x) if pre else x
        y = nn.Dense(c.ffn_dim, dtype=c.dtype, name="ffn_in")(y)
        y = Dropout()(nn.gelu(y), keep, train=train)
        y = nn.Dense(c.hidden, dtype=c.dtype, name="ffn_out")(y)
        x = x + Dropout()(y, keep, train=train)
        if not pre:
            x = ln_ffn(x)
        if c.adapter_dim:  # market-specific bottleneck adapter; starts as the identity
            y = nn.gelu(nn.Dense(c.adapter_dim, dtype=c.dtype, name="adapter_down")(x))
            up = nn.Dense(
                c.hidden, kernel_init=nn.initializers.zeros, dtype=c.dtype, name="adapter_up"
            )
            x = x + up(y)
        return x


class SequenceModel(nn.Module):
    """Item adaptor + causal Transformer.

    `__call__(inputs, semantics)` returns (hidden [B, L, d], items [N + 1, d]); scores are
    `scores(hidden, items, item_mask)`. In training, `dropout_keep` (float32, the run's
    `keep_probability`) replaces the config's rate as data; None = the config's rate.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        if c.use_text:
            self.adaptor = ItemAdaptor(c.hidden, c.num_experts, c.dtype)
        if c.num_item_ids:
            init = (
                nn.initializers.zeros
                if c.item_id_init == "zeros"
                else nn.initializers.normal(stddev=c.item_id_std or c.hidden**-0.5)
            )
            self.item_ids = nn.Embed(c.num_item_ids, c.hidden, embedding_init=init, dtype=c.dtype)
        self.positions = nn.Embed(c.max_len, c.hidden, dtype=c.dtype)
        self.embed_norm = nn.LayerNorm(dtype=c.dtype)
        self.embed_dropout = Dropout()
        self.blocks = [Block(c, name=f"block_{i}") for i in range(c.num_layers)]
        self.final_norm = nn.LayerNorm(dtype=c.dtype)

    def _keep(self, dropout_keep):
        """The keep probability of every dropout (None: no dropout in the program)."""
        if not self.config.dropout:
            return None
        return 1.0 - self.config.dropout if dropout_keep is None else dropout_keep

    def item_embeddings(self, semantics: Array, *, train: bool = False, dropout_keep=None) -> Array:
        """[N + 1, d] item representations from semantic vectors [N + 1, d_s] (for an ID-only
        model only their count N + 1 is used)."""
        ids = jnp.arange(semantics.shape[0])
        if not self.config.use_text:
            return self.item_ids(ids)
        items = self.adaptor(semantics, self._keep(dropout_keep), train=train)
        if self.config.num_item_ids:
            items = items + self.item_ids(ids)
        return items

    def encode(
        self, inputs: Array, items: Array, *, train: bool = False, dropout_keep=None
    ) -> Array:
        """Hidden states [B, L, d] of left-padded item sequences inputs [B, L] (0 = padding)."""
        keep = self._keep(dropout_keep)
        length = inputs.shape[-1]
        valid = inputs > 0
        x = items[inputs] + self.positions(jnp.arange(length))
        x = self.embed_dropout(self.embed_norm(x), keep, train=train)
        x = x * valid[..., None]
        mask = nn.make_causal_mask(inputs, dtype=bool) & nn.make_attention_mask(
            valid, valid, dtype=bool
        )
        # A padding query attends to nothing; let it see itself so softmax stays finite.
        mask = mask | jnp.eye(length, dtype=bool)
        for block in self.blocks:
            x = block(x, mask, keep, train=train) * valid[..., None]
        return self.final_norm(x) if self.config.norm == "pre" else x

    def __call__(self, inputs: Array, semantics: Array, *, train: bool = False, dropout_keep=None):
        items = self.item_embeddings(semantics, train=train, dropout_keep=dropout_keep)
        return self.encode(inputs, items, train=train, dropout_keep=dropout_keep), items


def scores(config: ModelConfig, hidden: Array, items: Array, item_mask: Array) -> Array:
    """Scores [..., N + 1] = <hidden, e_i> / tau, -inf where item_mask is False."""
    z = hidden @ items.T / config.score_temperature
    return jnp.where(item_mask, z, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("config", "semantic_dim"))
def init_params(config: ModelConfig, key: Array, semantic_dim: int):
    """Initial shared parameters (a plain pytree). One compiled program per config: run
    eagerly, Flax's init would compile every layer's initialisers and ops on their own."""
    model = SequenceModel(config)
    inputs = jnp.ones((1, config.max_len), jnp.int32)
    semantics = jnp.zeros((2, semantic_dim), jnp.float32)
    return model.init({"params": key}, inputs, semantics)["params"]
