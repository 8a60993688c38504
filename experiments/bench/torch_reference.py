"""The PyTorch reference: the same model and the same federated round, the way research code
writes it (a Python loop over markets: copy the global model, K Adam steps, average).

Needs the [bench] extra (`pip install torch==2.13.0`); imported only by the benchmark.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from experiments.bench.common import BenchConfig


def layer_norm(width: int) -> nn.LayerNorm:
    """LayerNorm with Flax's epsilon (1e-6; PyTorch's default is 1e-5)."""
    return nn.LayerNorm(width, eps=1e-6)


class ItemAdaptor(nn.Module):
    """Mixture of parametric-whitening experts, as fecosr_jax.model.ItemAdaptor."""

    def __init__(self, c: BenchConfig, dropout: float):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c.num_experts, c.semantic_dim))
        self.weight = nn.Parameter(
            torch.randn(c.num_experts, c.semantic_dim, c.hidden) / c.semantic_dim**0.5
        )
        self.gate = nn.Linear(c.semantic_dim, c.num_experts, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.dropout(x)
        experts = torch.einsum("nes,esd->ned", x[:, None, :] - self.bias, self.weight)
        gate = torch.softmax(self.gate(x), dim=-1)
        return torch.einsum("ne,ned->nd", gate, experts)


class Block(nn.Module):
    """Pre-LayerNorm block, as fecosr_jax.model.Block."""

    def __init__(self, c: BenchConfig, dropout: float):
        super().__init__()
        self.ln_attn = layer_norm(c.hidden)
        self.attn = nn.MultiheadAttention(c.hidden, c.num_heads, dropout=dropout, batch_first=True)
        self.ln_ffn = layer_norm(c.hidden)
        self.ffn = nn.Sequential(
            nn.Linear(c.hidden, c.ffn_dim),
            nn.GELU(approximate="tanh"),  # Flax's nn.gelu
            nn.Dropout(dropout),
            nn.Linear(c.ffn_dim, c.hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, attn_mask):
        y = self.ln_attn(x)
        y, _ = self.attn(y, y, y, attn_mask=attn_mask, need_weights=False)
        x = x + self.dropout(y)
        return x + self.dropout(self.ffn(self.ln_ffn(x)))


class SequenceModel(nn.Module):
    def __init__(self, c: BenchConfig, dropout: float = 0.2):
        super().__init__()
        self.adaptor = ItemAdaptor(c, dropout)
        self.positions = nn.Embedding(c.max_len, c.hidden)
        self.embed_norm = layer_norm(c.hidden)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(c, dropout) for _ in range(c.num_layers)])
        self.final_norm = layer_norm(c.hidden)
        self.register_buffer(
            "causal", torch.triu(torch.ones(c.max_len, c.max_len, dtype=torch.bool), 1)
        )

    def forward(self, inputs, semantics):
        items = self.adaptor(semantics)
        x = items[inputs] + self.positions.weight[None, : inputs.shape[1]]
        x = self.dropout(self.embed_norm(x))
        for block in self.blocks:
            x = block(x, self.causal)
        return self.final_norm(x) @ items.T  # [B, L, N + 1]


def load_jax_params(model: SequenceModel, params) -> None:
    """Copies fecosr_jax.model's parameters (a pytree of arrays, the JAX model of the same
    BenchConfig) into `model`, so that both compute the same function: Flax kernels are
    [in, out] where torch.nn.Linear holds [out, in], and Flax's attention keeps query, key,
    value and output per head ([d, heads, d_head], [heads, d_head, d]) where PyTorch stacks
    q, k, v into one [3d, d] input projection."""

    def t(x, transpose=False):
        x = torch.from_numpy(np.array(x, np.float32))
        return x.T.contiguous() if transpose else x

    def linear(module: nn.Linear, p):
        module.weight.copy_(t(p["kernel"], transpose=True))
        if module.bias is not None:
            module.bias.copy_(t(p["bias"]))

    def norm(module: nn.LayerNorm, p):
        module.weight.copy_(t(p["scale"]))
        module.bias.copy_(t(p["bias"]))

    def heads(p):  # Flax's [d, heads, d_head] kernel, [heads, d_head] bias -> Linear's
        d = p["kernel"].shape[0]
        return t(np.reshape(p["kernel"], (d, -1)), transpose=True), t(np.ravel(p["bias"]))

    with torch.no_grad():
        a = params["adaptor"]
        model.adaptor.bias.copy_(t(a["bias"]))
        model.adaptor.weight.copy_(t(a["weight"]))
        linear(model.adaptor.gate, a["gate"])
        model.positions.weight.copy_(t(params["positions"]["embedding"]))
        norm(model.embed_norm, params["embed_norm"])
        for i, block in enumerate(model.blocks):
            p = params[f"block_{i}"]
            norm(block.ln_attn, p["ln_attn"])
            norm(block.ln_ffn, p["ln_ffn"])
            qkv = [heads(p["attn"][name]) for name in ("query", "key", "value")]
            block.attn.in_proj_weight.copy_(torch.cat([w for w, _ in qkv]))
            block.attn.in_proj_bias.copy_(torch.cat([b for _, b in qkv]))
            out = p["attn"]["out"]
            block.attn.out_proj.weight.copy_(
                t(np.reshape(out["kernel"], (-1, out["kernel"].shape[-1])), transpose=True)
            )
            block.attn.out_proj.bias.copy_(t(out["bias"]))
            linear(block.ffn[0], p["ffn_in"])
            linear(block.ffn[3], p["ffn_out"])
        norm(model.final_norm, params["final_norm"])


def default_device() -> str:
    """CUDA when PyTorch sees a GPU (as the JAX backends then run there), else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class TorchRound:
    """FedAvg over markets in a Python loop: per market, copy the global model, K Adam steps
    of CE over all positions, and add the weighted delta to the average."""

    def __init__(
        self, c: BenchConfig, data: dict[str, np.ndarray], lr: float = 1e-3, seed=0, device=None
    ):
        torch.manual_seed(seed)
        self.c = c
        self.device = torch.device(device or default_device())
        if self.device.type == "cuda":
            # TF32 for fp32 products, as XLA's default precision does on the same GPU.
            torch.set_float32_matmul_precision("high")
        self.global_model = SequenceModel(c).to(self.device)
        self.train = torch.from_numpy(data["train"]).long().to(self.device)
        self.semantics = torch.from_numpy(data["semantics"]).to(self.device)
        self.mask = torch.from_numpy(data["item_mask"]).to(self.device)
        self.weight = torch.from_numpy(data["weight"]).to(self.device)
        self.lr = lr
        self.generator = torch.Generator().manual_seed(seed)

    def step(self):
        c = self.c
        start = {k: v.detach().clone() for k, v in self.global_model.named_parameters()}
        total = {k: torch.zeros_like(v) for k, v in start.items()}
        for m in range(self.train.shape[0]):
            model = copy.deepcopy(self.global_model)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
            for _ in range(c.local_steps):
                users = torch.randint(
                    0, self.train.shape[1], (c.batch_size,), generator=self.generator
                ).to(self.device)
                rows = self.train[m][users]
                logits = model(rows[:, :-1], self.semantics[m])
                logits = logits.masked_fill(~self.mask[m], float("-inf"))
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                for k, v in model.named_parameters():
                    total[k] += self.weight[m] * (v - start[k])
        with torch.no_grad():
            norm = self.weight.sum()
            for k, v in self.global_model.named_parameters():
                v.copy_(start[k] + total[k] / norm)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
