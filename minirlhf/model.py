"""The GPT: GPT-2's architecture in one readable file, plus the scalar head used by reward and value models.

    from minirlhf.config import ModelConfig
    from minirlhf.model import GPT, ScalarHead
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=2048))
    logits = model(idx)                                   # (B, T, V)
    hidden = model.hidden_states(idx, attention_mask=m)   # (B, T, C), after the final LayerNorm

Architecture (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): learned position
embeddings, pre-LayerNorm blocks, GELU MLP with 4x expansion, tied input/output embeddings, GPT-2's init
(N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)). The names of the parameters follow
Hugging Face's GPT-2 so checkpoints map one to one.

Attention runs through `F.scaled_dot_product_attention`; `plain_attention` beside it is the readable
matmul-softmax reference, and a test checks they agree in float64.

Padding and the KV cache. RLHF batches are left-padded (prompts of different lengths end at the same
column so that generation appends in lock-step). Two tensors make that correct:
  * `attention_mask` (B, T_keys): 1 on real tokens, 0 on pads. A query never attends to a pad key.
    (Every query may attend to itself, so a pad query's softmax has one finite term instead of NaN.)
  * position ids: counted over real tokens only, `cumsum(mask) - 1`, so a prompt gets positions
    0, 1, 2, ... however much padding sits on its left.
The KV cache is preallocated, `(n_layer, B, n_head, max_len, head_dim)`, and attention always reads all
`max_len` columns through the mask: the shapes of a decode step never change (which `torch.compile` and
CUDA graphs need).

Deliberate simplifications: no rotary embeddings, no grouped-query attention, no gradient checkpointing;
the cache is filled in lock-step for the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minirlhf.config import ModelConfig
from minirlhf.ops import upcast


def plain_attention(q, k, v, mask=None, dropout_p: float = 0.0):
    """Reference attention: dropout(softmax(q k^T / sqrt(d) + mask)) v, written out.

    q: (B, H, Tq, D), k, v: (B, H, Tk, D), mask: bool (B or 1, 1, Tq, Tk), True = may attend.
    dropout_p: dropout on the attention weights, as `F.scaled_dot_product_attention` applies it.
    """
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, dropout_p)  # (B, H, Tq, Tk)
    return att @ v  # (B, H, Tq, D)


def build_attention_mask(T: int, start: int, total: int, key_mask, device):
    """Boolean (B or 1, 1, T, total) mask for queries at columns start..start+T-1 over `total` key columns.

    A key is visible if it is not in the future (causal) and not a pad (key_mask); every query also sees
    itself, so that no row of the softmax is empty.
    """
    q_col = torch.arange(start, start + T, device=device)[:, None]  # (T, 1)
    k_col = torch.arange(total, device=device)[None, :]  # (1, total)
    causal = k_col <= q_col  # (T, total)
    if key_mask is None:
        return causal[None, None]  # (1, 1, T, total)
    visible = causal[None] & key_mask[:, None, :total].bool()  # (B, T, total)
    visible = visible | (k_col == q_col)[None]  # a query always sees itself
    return visible[:, None]  # (B, 1, T, total)


class KVCache:
    """Preallocated keys and values for every layer; `length` columns are filled."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        if max_len > cfg.block_size:
            raise ValueError(f"KV cache of {max_len} positions exceeds the context of {cfg.block_size}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # filled columns (a Python int: the same for every row)

    def reset(self):
        """Mark every column empty (length = 0); the tensors are kept as they are, not zeroed."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: q, k, v from one Linear, SDPA (or `plain_attention`), an output Linear."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.use_sdpa = True  # False = the plain reference (tests compare the two)

    def forward(self, x, mask=None, kv_cache: KVCache | None = None, layer: int = 0):
        """x (B, T, C) -> (B, T, C).

        mask: bool (B or 1, 1, T, keys), True = may attend; None without a cache = plain causal attention.
        kv_cache: k and v are written into layer `layer` at columns kv_cache.length.. (the caller advances
        `length`) and the queries attend over all max_len columns through `mask`. Dropout (attention weights
        and output) in training mode only.
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            start = kv_cache.length
            kv_cache.k[layer, :, :, start:start + T] = k
            kv_cache.v[layer, :, :, start:start + T] = v
            k, v = kv_cache.k[layer], kv_cache.v[layer]  # (B, H, max_len, D): all columns, masked
        dropout_p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            is_causal = mask is None and kv_cache is None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            if mask is None and kv_cache is None:
                mask = build_attention_mask(T, 0, T, None, x.device)
            y = plain_attention(q, k, v, mask, dropout_p)  # the same dropout as SDPA's (other random masks)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2's feed-forward block: Linear C -> 4C, tanh-approximated GELU, Linear 4C -> C, dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's tanh GELU


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, kv_cache=None, layer=0):
        """(B, T, C) -> (B, T, C); `mask`, `kv_cache` and `layer` go to the attention (CausalSelfAttention.forward)."""
        x = x + self.attn(self.ln_1(x), mask, kv_cache, layer)  # pre-LayerNorm residual blocks
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2: token and position embeddings, n_layer Blocks, a final LayerNorm and an LM head tied to the token
    embeddings (see the module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @classmethod
    def from_hf(cls, path: str) -> "GPT":
        """A Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin) -> GPT with
        the same logits; the vocabulary as stored (see minirlhf/hf.py, which also adds the chat tokens)."""
        from minirlhf.hf import load_hf_gpt2

        return load_hf_gpt2(path)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (the token ones are tied)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def set_attention_impl(self, use_sdpa: bool):
        """Switch every layer between SDPA and the plain reference attention."""
        for block in self.transformer.h:
            block.attn.use_sdpa = use_sdpa

    def hidden_states(self, idx, attention_mask=None, position_ids=None, kv_cache: KVCache | None = None):
        """Final hidden states (after ln_f) for tokens `idx` (B, T) -> (B, T, C).

        attention_mask: (B, T) without a cache, (B, max_len) with one (1 = real token); None = no padding.
        position_ids: (B, T); None = derived from the mask (cumsum - 1) or 0..T-1.
        kv_cache: new keys/values are written at columns cache.length.. and cache.length advances by T.
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        total = kv_cache.max_len if kv_cache is not None else T
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.config.block_size}")
        if kv_cache is not None and start + T > total:
            raise ValueError(f"{start} cached + {T} new tokens exceed the KV cache's {total} columns")
        if kv_cache is not None and kv_cache.k.size(1) != B:
            raise ValueError(f"the KV cache holds {kv_cache.k.size(1)} rows but idx has {B}")
        if attention_mask is not None and attention_mask.shape != (B, total):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)}: expected ({B}, {total}) "
                             + ("(batch, the KV cache's max_len)" if kv_cache is not None else "(batch, tokens)"))
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask[:, :start + T].long().cumsum(-1) - 1).clamp(min=0)[:, start:]
            else:
                position_ids = torch.arange(start, start + T, device=idx.device)[None].expand(B, T)
        mask = None
        if attention_mask is not None or kv_cache is not None:
            mask = build_attention_mask(T, start, total, attention_mask, idx.device)  # (B|1, 1, T, total)
        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length = start + T
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx, attention_mask=None, position_ids=None, kv_cache: KVCache | None = None,
                return_hidden: bool = False):
        """Logits (B, T, V); the logits at position t predict token t+1.

        return_hidden=True returns the final hidden states (B, T, C) instead, for
        `ops.fused_linear_logprobs` (through forward, so DDP and torch.compile wrappers see the call).
        """
        hidden = self.hidden_states(idx, attention_mask, position_ids, kv_cache)  # (B, T, C)
        return hidden if return_hidden else self.lm_head(hidden)

    def new_kv_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        """An empty KVCache of `max_len` positions for `batch_size` rows, on the model's device and in `dtype` (default:
        the weights' dtype). ValueError when max_len exceeds the context."""
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len, p.device, dtype or p.dtype)

    def optimizer_groups(self, weight_decay: float):
        """AdamW parameter groups: decay on matrices of Linear layers only (not biases, norms, embeddings)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_embedding = name.startswith("transformer.wte") or name.startswith("transformer.wpe")
            (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ScalarHead(nn.Module):
    """A linear layer from the final hidden state to one number per position: (B, T, C) -> (B, T).

    Used for the reward model (score read at the last real token) and the value model (a value at every
    response position). `gain` and `offset` (buffers, 1 and 0 by default) rescale the output after training
    so a reward model's scores have mean 0 and std 1 on reference samples (Ziegler et al. 2019, §2.2).
    """

    def __init__(self, n_embd: int):
        super().__init__()
        self.linear = nn.Linear(n_embd, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(n_embd + 1))
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, hidden):
        """hidden (B, T, C) -> (B, T): the linear layer in at least float32 (bf16/fp16 inputs and weights are upcast,
        autocast is off), then `* gain + offset`."""
        # in float32 at least, even under bf16 autocast or with bf16 weights: in bf16 (8 bits of mantissa)
        # scores such as 5.30 and 5.34 round to one value, and the Bradley-Terry loss, the pair accuracy and
        # PPO's rewards and values all read these numbers
        with torch.autocast(hidden.device.type, enabled=False):
            out = F.linear(upcast(hidden), upcast(self.linear.weight), upcast(self.linear.bias))  # (B, T, 1)
        return out.squeeze(-1) * self.gain + self.offset  # (B, T)


def last_token_index(attention_mask, where: str = "last_token_index"):
    """Index of the last real token per row, (B, T) -> (B,); right or left padding alike.

    ValueError naming the rows (and `where`) when a row has no real token: it has no last token to read.
    """
    empty = ~attention_mask.bool().any(dim=1)  # (B,)
    if empty.any():
        raise ValueError(f"{where}: rows {empty.nonzero().flatten().tolist()} of the attention mask have no "
                         "real token (an empty sequence has no last token to read)")
    T = attention_mask.size(1)
    positions = torch.arange(T, device=attention_mask.device)  # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)  # the largest position whose mask is 1


def at_last_token(values, attention_mask):
    """(B, T) per-position values -> (B,), each row's value at its last real token (a reward model's score)."""
    return values.gather(1, last_token_index(attention_mask, "at_last_token")[:, None]).squeeze(1)


class ScalarModel(nn.Module):
    """A GPT trunk with an explicit `ScalarHead`: the reward model and the value model.

    reward model: `score(idx, mask)` -> (B,), read at the last real token (the `<|end|>`), never at a pad;
    value model:  `forward(idx, mask)` -> (B, T), one value per position.
    InstructGPT initialises both trunks from SFT (the reward model) and the value model from the
    reward model (Ouyang et al. 2022, §3.5).
    """

    def __init__(self, trunk: GPT):
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.n_embd)

    @property
    def config(self) -> ModelConfig:
        """The trunk's ModelConfig."""
        return self.trunk.config

    def forward(self, idx, attention_mask=None):
        """The head on the trunk's final hidden states: idx (B, T) -> one value per position (B, T)."""
        return self.head(self.trunk.hidden_states(idx, attention_mask))  # (B, T)

    def score(self, idx, attention_mask):
        """Each row's value at its last real token: idx, attention_mask (B, T) -> (B,) (a reward model's score)."""
        values = self(idx, attention_mask)  # (B, T)
        return at_last_token(values, attention_mask)  # (B,)
