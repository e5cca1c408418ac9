"""`minirlhf sample`: print continuations of a prompt from any checkpoint.

    minirlhf sample --checkpoint out/tiny/pretrain/model.pt --prompt "The capital of France is"
    minirlhf sample --checkpoint out/tiny/sft/model.pt --chat --prompt "What is the capital of Peru?"

The tokenizer is read from `tokenizer.json` next to the checkpoint (every stage writes one there).
Plain prompts are continued as text and stop at `<|endoftext|>`; `--chat` renders the prompt as a user
turn and stops at `<|end|>`.
"""

from __future__ import annotations

import os
import sys

import torch

from minirlhf.chat import render_prompt
from minirlhf.checkpoint import load_model
from minirlhf.common import resolve_device
from minirlhf.config import SampleConfig
from minirlhf.engine import check_sampling, generate
from minirlhf.tokenizer import Tokenizer


def tokenizer_for(checkpoint: str) -> Tokenizer:
    """The Tokenizer in the tokenizer.json next to `checkpoint`; FileNotFoundError when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer.json next to {checkpoint}")
    return Tokenizer.load(path)


def run(cfg: SampleConfig) -> list[str]:
    """`minirlhf sample`: print `num_samples` continuations of --prompt from --checkpoint; returns them decoded.

    A plain prompt is continued up to <|endoftext|>; with --chat it is rendered as a user turn and the reply stops at
    <|end|> (the stop token is part of the returned text when it was emitted). At most max_new_tokens, fewer when
    the prompt leaves less room in the context (a note on stderr says so); one generator seeded `seed`. Writes
    nothing. ValueError without --checkpoint, for a bad top_k / top_p, or when the prompt fills the context.
    """
    if not cfg.checkpoint:
        raise ValueError("--checkpoint is required, e.g. --checkpoint=out/tiny/pretrain/model.pt")
    check_sampling(cfg.top_k, cfg.top_p)  # before the model is loaded: a bad filter fails at once
    if cfg.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={cfg.max_new_tokens}: must be >= 1")
    device = resolve_device(cfg.device)
    model, _ = load_model(cfg.checkpoint, device)
    tok = tokenizer_for(cfg.checkpoint)
    ids = render_prompt(tok, cfg.prompt) if cfg.chat else tok.encode(cfg.prompt)
    stop = tok.end_id if cfg.chat else tok.eot_id
    budget = min(cfg.max_new_tokens, model.config.block_size - len(ids))
    if budget < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens: no room left in the context of {model.config.block_size}")
    if budget < cfg.max_new_tokens:
        print(f"[sample] note: the prompt has {len(ids)} tokens, which leaves room for {budget} new tokens in the "
              f"context of {model.config.block_size}, not --max_new_tokens={cfg.max_new_tokens}", file=sys.stderr)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out = generate(model, [ids] * cfg.num_samples, budget, eos_id=stop, pad_id=tok.pad_id,
                   temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=gen)
    texts = []
    for i, (row, mask) in enumerate(zip(out.response.tolist(), out.response_mask.tolist())):
        text = tok.decode([t for t, m in zip(row, mask) if m])
        texts.append(text)
        print(f"--- sample {i + 1} ---\n{cfg.prompt}{text}" if not cfg.chat else f"--- sample {i + 1} ---\n{text}")
    return texts
