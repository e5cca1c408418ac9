"""Batched generation with a static KV cache, and the two slower generators it must agree with.

    from minirlhf.engine import generate
    out = generate(model, prompts, max_new_tokens=48, eos_id=tok.end_id, pad_id=tok.pad_id,
                   temperature=0.7, top_k=0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    out.response        # (B, N) sampled tokens, pad after each row's <|end|>
    out.logprobs        # (B, N) log-prob of each sampled token under the sampling temperature, 0 on pads
    out.response_mask   # (B, N) 1 on real response tokens (the <|end|> included), 0 after it

How it works: prompts (lists of token ids of different lengths) are LEFT-padded so they all end at the
same column P; one forward pass over (B, P) (the prefill) computes the prompt's keys and values, which
go into a preallocated cache of P + max_new_tokens columns, and the logits of the last position only;
then each decode step feeds the B tokens sampled last, writes their keys and values into column P + t
of the cache and attends over all columns through a mask. Position ids count
real tokens only, so a prompt's output does not depend on how much padding its batch needed. A row that
has emitted `eos_id` keeps producing `pad_id` (masked out) until every row is done; the "all done?"
check reads the device every `sync_every` tokens rather than every token. Sampling runs on the model's
device with the caller's seeded `torch.Generator`.

The decode step (`decode_step`) has static shapes: the token, its position and the cache column are
tensors, the cache is written by index assignment at the (1,) column tensor and read in full. So
`torch.compile` can capture the whole step (`generate(..., compile=True)`: `mode="reduce-overhead"`,
i.e. CUDA graphs, on CUDA), which
removes the per-layer kernel-launch overhead that dominates small-batch decoding on a GPU (the recipe of
PyTorch's gpt-fast, https://github.com/pytorch-labs/gpt-fast). On CPU the eager step is already fast: it
attends with two small batched matmuls instead of the fused SDPA kernel, which is slow for one query.

The returned log-probs are `log_softmax(logits / temperature)` at the sampled token, *before* top-k/top-p
filtering: exactly what a training pass recomputes from the same logits at the same temperature, so PPO's
first ratio is 1. (Filtering only changes which tokens can be drawn.) With `temperature=0` the decoding is
greedy and the log-probs are taken at temperature 1.

The references, which tests compare `generate` against token for token:
  * `generate_kv_reference`: the same loop through `GPT.forward` with the model's own `KVCache`;
  * `generate_naive`: recompute the whole sequence every step, no cache: slow and obviously right.

`response_logprobs` / `sequence_logprobs` recompute a rollout's (or any sequence's) log-probs, and
optionally entropies, in a training pass; from `ops.FUSED_VOCAB_THRESHOLD` tokens of vocabulary up they
go through `ops.fused_linear_logprobs`, so the full (B, T, V) logits are never held.

Deliberate simplifications: one shared cache length for the batch (lock-step decoding), no speculative
decoding, no beam search, no paged attention; the decode step reads every cache column (masked) rather
than only the filled ones, which keeps its shapes static at the price of some wasted attention work.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minirlhf import distributed as dist
from minirlhf.distributed import unwrap  # the GPT inside DDP / torch.compile wrappers
from minirlhf.model import plain_attention
from minirlhf.ops import linear_logprobs, logprobs_and_entropy, logprobs_from_logits, upcast, use_fused_logprobs


@dataclass
class Generation:
    """A batch of sampled rollouts: left-padded prompts and right-padded responses (B rows), what `generate` returns."""

    prompt: torch.Tensor  # (B, P) left-padded prompt ids
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response: torch.Tensor  # (B, N) generated ids, pad_id after the row's eos
    logprobs: torch.Tensor  # (B, N) log-probs of the sampled tokens at the sampling temperature
    response_mask: torch.Tensor  # (B, N) 1 on real response tokens (eos included)

    @property
    def tokens(self) -> torch.Tensor:
        """Prompt and response side by side, (B, P + N)."""
        return torch.cat([self.prompt, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + N) 1 on every real token of prompt and response."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def ended(self, eos_id: int) -> torch.Tensor:
        """(B,) bool: the row emitted `eos_id` within the token budget."""
        return ((self.response == eos_id) & self.response_mask.bool()).any(dim=1)

    def padded_to(self, P: int, N: int, pad_id: int) -> "Generation":
        """The same rows laid out wider: the prompt left-padded to P columns, the response right-padded to N.

        Extra pads change nothing: attention masks them and position ids count real tokens only. Used to
        put rollouts sampled in separate shards (or on separate ranks) side by side at one width.
        """
        left, right = P - self.prompt.size(1), N - self.response.size(1)
        if left < 0 or right < 0:
            raise ValueError(f"padded_to({P}, {N}): the generation is already {self.prompt.size(1)} + "
                             f"{self.response.size(1)} columns wide")
        return Generation(F.pad(self.prompt, (left, 0), value=pad_id),  # (B, P)
                          F.pad(self.prompt_mask, (left, 0), value=0),  # (B, P)
                          F.pad(self.response, (0, right), value=pad_id),  # (B, N)
                          F.pad(self.logprobs, (0, right), value=0.0),  # (B, N)
                          F.pad(self.response_mask, (0, right), value=0))  # (B, N)


def cat_generations(parts: list[Generation], P: int, N: int, pad_id: int) -> Generation:
    """Several Generations as one batch (rows in order), each first padded to prompt width P and response
    width N (`Generation.padded_to`)."""
    padded = [g.padded_to(P, N, pad_id) for g in parts]
    return Generation(*(torch.cat([getattr(g, f) for g in padded]) for f in
                        ("prompt", "prompt_mask", "response", "logprobs", "response_mask")))


def generate_sharded(model, prompts: list[list[int]], n_shards: int, seed: int, max_new_tokens: int, eos_id: int,
                     pad_id: int, temperature: float = 1.0) -> tuple[Generation, slice]:
    """This process's rows of a batch sampled in `n_shards` seeded shards -> (Generation, its rows of `prompts`).

    The rollout batch of PPO and GRPO, the same whatever the number of processes N: shard s (rows
    [s * B / n_shards, (s + 1) * B / n_shards)) is sampled with a generator seeded by `seed` and s, and rank
    r samples shards [r * n_shards / N, (r + 1) * n_shards / N), so one process with n_shards = N samples
    exactly what N processes do. Every rank lays its rows out at the batch's widths: P = the longest
    prompt of the whole batch, and N = the longest response on any rank (one all-reduce), so the ranks'
    rows can be all-gathered. n_shards must be a multiple of N and divide len(prompts) (checked by the
    stages, with their own option names).
    """
    world, rank = dist.world_size(), dist.rank()
    shard_size = len(prompts) // n_shards
    P = max(len(p) for p in prompts)  # the global batch's prompt width
    budget = min(max_new_tokens, unwrap(model).config.block_size - P)
    device = unwrap(model).lm_head.weight.device
    first, stop = rank * n_shards // world, (rank + 1) * n_shards // world  # this rank's shards
    parts = []
    for shard in range(first, stop):  # each sampled with a generator of its own
        gen = torch.Generator(device=device).manual_seed(seed * 1_009 + shard)
        parts.append(generate(model, prompts[shard * shard_size:(shard + 1) * shard_size], budget, eos_id, pad_id,
                              temperature=temperature, generator=gen))
    N = int(dist.all_reduce_max(float(max(g.response.size(1) for g in parts))))  # the global response width
    return cat_generations(parts, P, N, pad_id), slice(first * shard_size, stop * shard_size)


def left_pad(prompts: list[list[int]], pad_id: int, device=None):
    """Left-pad a list of token-id lists -> ids (B, P), mask (B, P) with 1 on real tokens."""
    if len(prompts) == 0:
        raise ValueError("no prompts to generate from")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = 1
    return ids.to(device), mask.to(device)


def check_sampling(top_k: int, top_p: float) -> None:
    """A clear error for filters that would leave no token to draw: top_k >= 0 (0 = off), top_p in (0, 1]."""
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k={top_k!r}: expected an integer >= 0 (keep the k most likely tokens; 0 = off)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: expected a number in (0, 1] (the nucleus' probability mass; 1 = off)")


def sample_next(logits, temperature: float, top_k: int, top_p: float, generator):
    """Pick the next token from last-position logits (B, V) -> tokens (B,), log-probs (B,).

    The log-prob is taken from `log_softmax(logits / temperature)` before filtering (see module docstring).
    top_k >= 0 (0 = off) and top_p in (0, 1] (1 = off), else a ValueError (`check_sampling`). top_k keeps
    exactly k tokens per row (among tokens tied with the k-th, the ones `torch.topk` returns).
    """
    check_sampling(top_k, top_p)
    logits = upcast(logits)  # sample and take log-probs in at least float32
    if temperature <= 0:  # greedy
        token = logits.argmax(dim=-1)  # (B,)
        logp = F.log_softmax(logits, dim=-1)  # (B, V)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    scaled = logits / temperature  # (B, V)
    logp = F.log_softmax(scaled, dim=-1)  # (B, V)
    filtered = scaled
    if top_k and top_k < scaled.size(-1):
        top = torch.topk(scaled, top_k, dim=-1).indices  # (B, k); among ties at the k-th, topk's pick
        keep = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, top, True)  # (B, V): exactly k per row
        filtered = filtered.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked strictly higher
        drop_sorted = mass_before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    probs = F.softmax(filtered, dim=-1)  # (B, V)
    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


def sequence_logprobs(model, tokens, attention_mask=None, start: int = 1, temperature: float = 1.0,
                      return_entropy: bool = False, fused: bool | None = None):
    """Per-token log-probs of tokens[:, start:] under `model`: (B, T) -> (B, T - start).

    Logits at position t predict token t + 1, so tokens[:, start:] are scored by logits[:, start - 1:-1]
    (start=1: every next-token log-prob, as DPO needs; start=P: a response after a P-token prompt).
    return_entropy=True also returns the entropy (B, T - start) of softmax(logits / temperature).
    fused: None = `ops.fused_linear_logprobs` when the vocabulary is >= `ops.FUSED_VOCAB_THRESHOLD` (the
    (B, T, V) logits are never held, forward or backward), True/False forces one path; both give the
    same numbers. `model` may be wrapped in DDP or torch.compile: the trunk runs through the wrapper.
    """
    if not 1 <= start <= tokens.size(1):
        raise ValueError(f"sequence_logprobs: start={start} must be in [1, {tokens.size(1)}] (the first scored "
                         f"token needs a token before it)")
    labels = tokens[:, start:]  # (B, T - start)
    if not use_fused_logprobs(unwrap(model).config.vocab_size, fused):
        logits = model(tokens, attention_mask=attention_mask)[:, start - 1:-1]  # (B, T - start, V)
        if not return_entropy:
            return logprobs_from_logits(logits, labels, temperature)  # (B, T - start)
        return logprobs_and_entropy(logits, labels, temperature)  # (B, T - start) each
    hidden = model(tokens, attention_mask=attention_mask, return_hidden=True)  # (B, T, C)
    return linear_logprobs(hidden[:, start - 1:-1], unwrap(model).lm_head.weight, labels, temperature,
                           return_entropy, fused=True)  # (B, T - start) [, (B, T - start)]


def response_logprobs(model, tokens, attention_mask, prompt_len: int, temperature: float = 1.0,
                      return_entropy: bool = False, fused: bool | None = None):
    """Per-token log-probs of the response part of `tokens` under `model`: (B, P + N) -> (B, N).

    `sequence_logprobs` from the prompt length on. With the rollout's temperature this reproduces
    `Generation.logprobs` to float rounding (about 1e-6 in float32: the cached decode and this full forward
    run different attention kernels), which is why PPO and GRPO recompute pi_old rather than reuse them.
    """
    return sequence_logprobs(model, tokens, attention_mask, prompt_len, temperature, return_entropy, fused)


def _check_lengths(model, P: int, max_new_tokens: int):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt of {P} tokens + {max_new_tokens} new tokens exceeds the model's context of "
                         f"{model.config.block_size}; shorten the prompts or lower max_new_tokens")


def _finish(prompt, prompt_mask, tokens, logps, alive_before):
    """Stack the per-step lists and drop the trailing columns in which every row was already done."""
    response = torch.stack(tokens, dim=1)  # (B, N)
    response_mask = torch.stack(alive_before, dim=1).long()  # (B, N): produced while the row was alive
    logprobs = torch.stack(logps, dim=1) * response_mask  # (B, N)
    n = int(response_mask.sum(1).max())  # one host sync per generation, not per token
    return Generation(prompt, prompt_mask, response[:, :n], logprobs[:, :n], response_mask[:, :n])


class StaticKVCache:
    """Keys and values for the decode step: one (B, n_head, max_len, head_dim) tensor per layer.

    One tensor per layer (not one stacked tensor) so that a step writes a whole tensor at an index
    rather than a view of a bigger one, which `torch.compile` can do in place. The prompt's keys and
    values come from the prefill's `KVCache` (`fill`); each decode step then writes one column.
    """

    def __init__(self, cfg, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.columns = torch.arange(max_len, device=device)  # (max_len,)
        self.max_len = max_len

    def matches(self, cfg, batch_size: int, max_len: int, device, dtype) -> bool:
        """True when this cache has the layout a call with these arguments needs (layers, shape, device, dtype),
        so that a kept cache can be reused."""
        shape = (batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        t = self.k[0]
        return len(self.k) == cfg.n_layer and t.shape == shape and t.device == torch.device(device) and t.dtype == dtype

    def fill(self, prefill_cache):
        """Copy the prompt's P columns from the prefill's KVCache; clear the columns after them."""
        P = prefill_cache.length
        for layer in range(len(self.k)):
            self.k[layer][:, :, :P] = prefill_cache.k[layer, :, :, :P]  # (B, H, P, D)
            self.v[layer][:, :, :P] = prefill_cache.v[layer, :, :, :P]
            self.k[layer][:, :, P:] = 0  # a kept cache holds the last rollout there (masked, but keep it clean)
            self.v[layer][:, :, P:] = 0


def decode_step(model, k_cache, v_cache, columns, key_mask, token, position, column):
    """One decode step with static shapes: the logits (B, V) that follow `token`.

    k_cache, v_cache: lists of n_layer (B, H, S, D) tensors, written in place at `column`; columns: (S,);
    key_mask: (B, S) bool, False on prompt pads; token, position: (B,) the tokens sampled last and their
    position ids; column: (1,) the cache column they occupy. A key is visible if it is not a pad and not
    in the future (column <= `column`). The same arithmetic as `GPT.forward` with a `KVCache`, written
    out for one query so that nothing depends on a Python int (tests check the two agree).
    """
    tr = model.transformer
    B, C = token.size(0), model.config.n_embd
    H = model.config.n_head
    D = C // H
    visible = (key_mask & (columns <= column))[:, None, None, :]  # (B, 1, 1, S)
    x = tr.wte(token) + tr.wpe(position)  # (B, C)
    for layer, block in enumerate(tr.h):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)  # 3 x (B, C)
        # (B, H, S, D): column `column` set; cast to the cache's dtype (under autocast k, v may differ from it)
        k_cache[layer][:, :, column] = k.view(B, H, 1, D).to(k_cache[layer].dtype)
        v_cache[layer][:, :, column] = v.view(B, H, 1, D).to(v_cache[layer].dtype)
        y = plain_attention(q.view(B, H, 1, D), k_cache[layer], v_cache[layer], visible)  # (B, H, 1, D)
        x = x + block.attn.c_proj(y.reshape(B, C))  # (B, C)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(tr.ln_f(x))  # (B, V)


# torch.compile'd decode steps (one per device type) and the one cache they write into. CUDA graphs
# replay fixed memory addresses, so with compile=True the cache is kept between calls and reused when
# the shapes match (its length is rounded up to a multiple of 64 so that prompts of slightly different
# lengths share a graph).
_COMPILED_STEPS: dict = {}
_KEPT_CACHE: list = []


def _compiled_decode_step(device: torch.device):
    if device.type not in _COMPILED_STEPS:
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs on CUDA
        _COMPILED_STEPS[device.type] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED_STEPS[device.type]


def _cache_for(model, B: int, needed: int, dtype, keep: bool) -> StaticKVCache:
    cfg, device = model.config, model.lm_head.weight.device
    if not keep:
        return StaticKVCache(cfg, B, needed, device, dtype)
    max_len = min(cfg.block_size, -(-needed // 64) * 64)  # round up to a multiple of 64
    if _KEPT_CACHE and _KEPT_CACHE[0].matches(cfg, B, max_len, device, dtype):
        return _KEPT_CACHE[0]
    _KEPT_CACHE.clear()  # at most one kept cache
    cache = StaticKVCache(cfg, B, max_len, device, dtype)
    if device.type == "cuda":
        for t in cache.k + cache.v:
            torch._dynamo.mark_static_address(t)  # the CUDA graph writes into these very buffers
    _KEPT_CACHE.append(cache)
    return cache


def _sample_loop(first_logits, next_logits, B: int, max_new_tokens: int, eos_id: int, pad_id: int,
                 temperature: float, top_k: int, top_p: float, generator, sync_every: int, device):
    """The loop every generator shares: sample, mask finished rows, stop when all rows are done.

    first_logits: (B, V) after the prompt; next_logits(step, token (B,)) -> (B, V) after `token`.
    Returns the per-step lists (tokens, log-probs, alive-before masks) for `_finish`.
    """
    logits = first_logits
    alive = torch.ones(B, dtype=torch.bool, device=device)  # (B,) row has not emitted eos yet
    pad = torch.full((B,), pad_id, dtype=torch.long, device=device)  # (B,)
    tokens, logps, alive_before = [], [], []
    for step in range(max_new_tokens):
        token, logp = sample_next(logits, temperature, top_k, top_p, generator)  # (B,), (B,)
        token = torch.where(alive, token, pad)
        tokens.append(token)
        logps.append(logp)
        alive_before.append(alive)
        alive = alive & (token != eos_id)
        if step == max_new_tokens - 1 or (sync_every and (step + 1) % sync_every == 0 and not alive.any()):
            break  # `alive.any()` is the only host sync, once every `sync_every` tokens
        logits = next_logits(step, token)
    return tokens, logps, alive_before


@contextmanager
def eval_mode(model):
    """`model.eval()` inside the block; the caller's train/eval mode comes back after it, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _prepare(model, prompts, pad_id: int, max_new_tokens: int, top_k: int, top_p: float):
    """Checked sampling settings, left-padded prompt ids and mask on the model's device, and the device."""
    check_sampling(top_k, top_p)
    device = model.lm_head.weight.device
    prompt, prompt_mask = left_pad(prompts, pad_id, device) if isinstance(prompts, list) else prompts
    _check_lengths(model, prompt.size(1), max_new_tokens)
    return prompt, prompt_mask, device


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             sync_every: int = 8, compile: bool = False) -> Generation:
    """Sample up to `max_new_tokens` for each prompt with a static KV cache (see module docstring).

    prompts: a list of token-id lists, or already left-padded (ids (B, P), mask (B, P)) tensors.
    generator: a `torch.Generator` on the model's device; the same seed gives the same tokens.
    sync_every: check "has every row emitted eos?" (a host sync) every this many tokens; 0 = never,
      always produce `max_new_tokens` columns (the trailing all-pad columns are still dropped).
    compile: run the decode step through `torch.compile` (CUDA graphs on CUDA). The first call per
      shape compiles (seconds to a minute); later calls with the same batch size and a cache length in
      the same multiple of 64 replay it. Off by default: eager is the fast choice on CPU.
    """
    model = unwrap(model)
    prompt, prompt_mask, device = _prepare(model, prompts, pad_id, max_new_tokens, top_k, top_p)
    B, P = prompt.shape
    with eval_mode(model):
        # the cache holds keys and values as the model computes them: in the autocast dtype under autocast
        autocast_on = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast_on else model.lm_head.weight.dtype
        cache = _cache_for(model, B, P + max_new_tokens, dtype, keep=compile)
        S = cache.max_len
        key_mask = torch.ones(B, S, dtype=torch.bool, device=device)  # (B, S) every generated column is real
        key_mask[:, :P] = prompt_mask.bool()
        prefill_cache = model.new_kv_cache(B, P)
        hidden = model.hidden_states(prompt, attention_mask=prompt_mask, kv_cache=prefill_cache)  # (B, P, C)
        first_logits = model.lm_head(hidden[:, -1])  # (B, V): the last position only
        cache.fill(prefill_cache)
        del prefill_cache
        step_fn = _compiled_decode_step(device) if compile else decode_step
        position = prompt_mask.sum(1) - 1  # (B,) position id of each row's last prompt token
        column = torch.full((1,), P - 1, dtype=torch.long, device=device)  # (1,) cache column of the last token

        def next_logits(step, token):
            nonlocal position, column
            position, column = position + 1, column + 1
            if compile and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            return step_fn(model, cache.k, cache.v, cache.columns, key_mask, token, position, column)  # (B, V)

        lists = _sample_loop(first_logits, next_logits, B, max_new_tokens, eos_id, pad_id, temperature, top_k,
                             top_p, generator, sync_every, device)
    return _finish(prompt, prompt_mask, *lists)


@torch.no_grad()
def generate_kv_reference(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int,
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                          generator: torch.Generator | None = None, sync_every: int = 8) -> Generation:
    """The same loop through `GPT.forward` and the model's own `KVCache` (a Python-int cache length).

    The reference for `decode_step`: same outputs as `generate`, token for token.
    """
    model = unwrap(model)
    prompt, prompt_mask, device = _prepare(model, prompts, pad_id, max_new_tokens, top_k, top_p)
    B, P = prompt.shape
    with eval_mode(model):
        cache = model.new_kv_cache(B, P + max_new_tokens)
        key_mask = torch.ones(B, P + max_new_tokens, dtype=torch.long, device=device)  # (B, P + N)
        key_mask[:, :P] = prompt_mask
        position = prompt_mask.sum(1, keepdim=True) - 1  # (B, 1) position id of each row's last prompt token
        first_logits = model(prompt, attention_mask=key_mask, kv_cache=cache)[:, -1]  # prefill -> (B, V)

        def next_logits(step, token):
            return model(token[:, None], attention_mask=key_mask, position_ids=position + step + 1,
                         kv_cache=cache)[:, -1]  # (B, V)

        lists = _sample_loop(first_logits, next_logits, B, max_new_tokens, eos_id, pad_id, temperature, top_k,
                             top_p, generator, sync_every, device)
    return _finish(prompt, prompt_mask, *lists)


@torch.no_grad()
def generate_naive(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Generation:
    """The reference: recompute the full sequence every step, no cache. Same outputs as `generate`."""
    prompt, prompt_mask, device = _prepare(model, prompts, pad_id, max_new_tokens, top_k, top_p)
    B, P = prompt.shape
    with eval_mode(model):
        seq, mask = prompt, prompt_mask
        alive = torch.ones(B, dtype=torch.bool, device=device)
        tokens, logps, alive_before = [], [], []
        for _ in range(max_new_tokens):
            logits = model(seq, attention_mask=mask)[:, -1]  # (B, V)
            token, logp = sample_next(logits, temperature, top_k, top_p, generator)
            token = torch.where(alive, token, torch.full_like(token, pad_id))
            tokens.append(token)
            logps.append(logp)
            alive_before.append(alive)
            alive = alive & (token != eos_id)
            seq = torch.cat([seq, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
            if not alive.any():
                break
    return _finish(prompt, prompt_mask, tokens, logps, alive_before)
