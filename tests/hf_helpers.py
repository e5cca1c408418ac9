"""Helpers shared by the Hugging Face interop tests (test_hf.py, test_hf_rules.py); not collected by pytest
(no test_ prefix). `random_gpt2` and `hf_logits` need transformers, which those test files skip without."""

import json

import torch

from minirlhf.hf_bpe import bytes_to_unicode


def random_gpt2(seed=0, vocab_size=297, **kw):
    """A tiny GPT2LMHeadModel whose every parameter is random (biases and LayerNorms included)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=64,
                                     bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, **kw)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.numel() == 32 else 0.0))
    return model


def hf_logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def write_merges(folder, merges):
    """vocab.json + merges.txt: the 256 bytes at their own ids, merge i creating id 256 + i, then <|endoftext|>."""
    u = bytes_to_unicode()
    vocab = {u[b]: b for b in range(256)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder
