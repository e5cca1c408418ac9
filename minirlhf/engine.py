"""Batched generation with a preallocated KV cache, and the naive generator it must agree with.

    from minirlhf.engine import generate
    out = generate(model, prompts, max_new_tokens=48, eos_id=tok.end_id, pad_id=tok.pad_id,
                   temperature=0.7, top_k=0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    out.response        # (B, N) sampled tokens, pad after each row's <|end|>
    out.logprobs        # (B, N) log-prob of each sampled token under the sampling temperature, 0 on pads
    out.response_mask   # (B, N) 1 on real response tokens (the <|end|> included), 0 after it

How it works: prompts (lists of token ids of different lengths) are LEFT-padded so they all end at the
same column P; one forward pass over (B, P) fills the cache (prefill); then each decode step feeds the B
tokens sampled last and appends one column. Position ids count real tokens only, so a prompt's output
does not depend on how much padding its batch needed. A row that has emitted `eos_id` keeps producing
`pad_id` (masked out) until every row is done; the "all done?" check reads the device every `sync_every`
tokens rather than every token.

The returned log-probs are `log_softmax(logits / temperature)` at the sampled token, *before* top-k/top-p
filtering: exactly what a training pass recomputes from the same logits at the same temperature, so PPO's
first ratio is 1. (Filtering only changes which tokens can be drawn.) With `temperature=0` the decoding is
greedy and the log-probs are taken at temperature 1.

`generate_naive` recomputes the whole sequence every step without a cache: slow, obviously right, and
the reference that tests compare `generate` against.

Deliberate simplifications: one shared cache length for the batch (lock-step decoding), no speculative
decoding, no beam search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minirlhf.ops import logprobs_from_logits, upcast


@dataclass
class Generation:
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


def sample_next(logits, temperature: float, top_k: int, top_p: float, generator):
    """Pick the next token from last-position logits (B, V) -> tokens (B,), log-probs (B,).

    The log-prob is taken from `log_softmax(logits / temperature)` before filtering (see module docstring).
    """
    logits = upcast(logits)  # sample and take log-probs in at least float32
    if temperature <= 0:  # greedy
        token = logits.argmax(dim=-1)  # (B,)
        logp = F.log_softmax(logits, dim=-1)  # (B, V)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    scaled = logits / temperature  # (B, V)
    logp = F.log_softmax(scaled, dim=-1)  # (B, V)
    filtered = scaled
    if top_k and top_k < scaled.size(-1):
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # (B, 1)
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
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


def response_logprobs(model, tokens, attention_mask, prompt_len: int, temperature: float = 1.0):
    """Per-token log-probs of the response part of `tokens` under `model`: (B, P + N) -> (B, N).

    Logits at position t predict token t + 1, so the response tokens tokens[:, P:] are scored by
    logits[:, P - 1:-1]. With the rollout's temperature this reproduces `Generation.logprobs` exactly.
    """
    logits = model(tokens, attention_mask=attention_mask)  # (B, P + N, V)
    return logprobs_from_logits(logits[:, prompt_len - 1:-1], tokens[:, prompt_len:], temperature)  # (B, N)


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


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             sync_every: int = 8) -> Generation:
    """Sample up to `max_new_tokens` for each prompt with a preallocated KV cache (see module docstring).

    prompts: a list of token-id lists, or already left-padded (ids (B, P), mask (B, P)) tensors.
    """
    device = model.lm_head.weight.device
    prompt, prompt_mask = left_pad(prompts, pad_id, device) if isinstance(prompts, list) else prompts
    B, P = prompt.shape
    _check_lengths(model, P, max_new_tokens)
    was_training = model.training
    model.eval()
    cache = model.new_kv_cache(B, P + max_new_tokens)
    key_mask = torch.ones(B, P + max_new_tokens, dtype=torch.long, device=device)  # (B, P + N)
    key_mask[:, :P] = prompt_mask
    position = prompt_mask.sum(1, keepdim=True) - 1  # (B, 1) position id of each row's last prompt token
    logits = model(prompt, attention_mask=key_mask, kv_cache=cache)[:, -1]  # prefill -> (B, V)
    alive = torch.ones(B, dtype=torch.bool, device=device)  # (B,) row has not emitted eos yet
    tokens, logps, alive_before = [], [], []
    for step in range(max_new_tokens):
        token, logp = sample_next(logits, temperature, top_k, top_p, generator)  # (B,), (B,)
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        tokens.append(token)
        logps.append(logp)
        alive_before.append(alive)
        alive = alive & (token != eos_id)
        if step == max_new_tokens - 1 or ((step + 1) % sync_every == 0 and not alive.any()):
            break
        position = position + 1
        logits = model(token[:, None], attention_mask=key_mask, position_ids=position, kv_cache=cache)[:, -1]
    model.train(was_training)
    return _finish(prompt, prompt_mask, tokens, logps, alive_before)


@torch.no_grad()
def generate_naive(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Generation:
    """The reference: recompute the full sequence every step, no cache. Same outputs as `generate`."""
    device = model.lm_head.weight.device
    prompt, prompt_mask = left_pad(prompts, pad_id, device) if isinstance(prompts, list) else prompts
    B, P = prompt.shape
    _check_lengths(model, P, max_new_tokens)
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return _finish(prompt, prompt_mask, tokens, logps, alive_before)
