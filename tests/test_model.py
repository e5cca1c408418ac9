"""The GPT: fast vs reference attention, causality, padding invariance, KV cache, optimiser groups."""

import pytest
import torch
import torch.nn as nn

from minirlhf.config import ModelConfig
from minirlhf.model import GPT, ScalarHead, build_attention_mask, plain_attention

CFG = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=48, vocab_size=97, dropout=0.0)


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(CFG).to(dtype).eval()


def test_sdpa_matches_plain_attention_float64():
    model = make_model()
    idx = torch.randint(0, CFG.vocab_size, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :7] = 0  # left padding on one row
    for m in (None, mask):
        fast = model(idx, attention_mask=m)
        model.set_attention_impl(use_sdpa=False)
        slow = model(idx, attention_mask=m)
        model.set_attention_impl(use_sdpa=True)
        assert (fast - slow).abs().max().item() < 1e-10


def test_plain_attention_against_hand_computation():
    # one head, two positions, d = 1: q=k=v=[[1],[2]]; causal
    q = torch.tensor([[[[1.0], [2.0]]]], dtype=torch.float64)  # (1, 1, 2, 1)
    out = plain_attention(q, q, q, build_attention_mask(2, 0, 2, None, "cpu"))
    # row 0 sees only itself -> 1; row 1: weights softmax([2*1, 2*2]) over values [1, 2]
    w = torch.softmax(torch.tensor([2.0, 4.0], dtype=torch.float64), 0)
    assert torch.allclose(out[0, 0, :, 0], torch.stack([torch.tensor(1.0, dtype=torch.float64), w[0] * 1 + w[1] * 2]))


def test_plain_attention_drops_attention_weights_like_sdpa():
    """In training the plain path drops softmax WEIGHTS (as SDPA does), not the attention output: with the
    same RNG seed its output equals the weights dropped by hand, @ V, projected, then the residual dropout."""
    import math

    import torch.nn.functional as F

    from minirlhf.model import CausalSelfAttention

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=11, dropout=0.5)
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg).double().train()
    attn.use_sdpa = False
    x = torch.randn(2, 6, 8, dtype=torch.float64)  # (B, T, C)
    torch.manual_seed(123)
    out = attn(x)
    # by hand, drawing the random masks in the same order
    torch.manual_seed(123)
    q, k, v = (t.view(2, 6, 2, 4).transpose(1, 2) for t in attn.c_attn(x).split(8, dim=2))  # 3 x (B, H, T, D)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(4)  # (B, H, T, T)
    att = att.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    y = (F.dropout(att, 0.5) @ v).transpose(1, 2).reshape(2, 6, 8)  # (B, T, C)
    expected = F.dropout(attn.c_proj(y), 0.5)
    assert torch.allclose(out, expected, atol=1e-12)


def test_causality_future_tokens_do_not_change_past_logits():
    model = make_model()
    idx = torch.randint(0, CFG.vocab_size, (2, 30))
    base = model(idx)
    for t in (0, 10, 28):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % CFG.vocab_size
        out = model(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_left_padding_does_not_change_real_positions():
    model = make_model()
    seq = torch.randint(0, CFG.vocab_size, (1, 20))
    alone = model(seq)
    padded = torch.cat([torch.full((1, 9), 5), seq], dim=1)  # 9 pad tokens of arbitrary id
    mask = torch.cat([torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)], dim=1)
    out = model(padded, attention_mask=mask)
    assert (out[:, 9:] - alone).abs().max().item() < 1e-10


def test_kv_cache_forward_equals_full_forward():
    model = make_model()
    idx = torch.randint(0, CFG.vocab_size, (2, 24))
    full = model(idx)
    cache = model.new_kv_cache(2, 24)
    parts = [model(idx[:, :10], kv_cache=cache)]  # prefill 10, then one token at a time
    for t in range(10, 24):
        parts.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.length == 24
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-10


def test_context_overflow_is_a_clear_error():
    model = make_model()
    try:
        model(torch.zeros(1, CFG.block_size + 1, dtype=torch.long))
    except ValueError as e:
        assert "exceeds the context" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_kv_cache_longer_than_the_context_is_a_clear_error():
    model = make_model()
    model.new_kv_cache(1, CFG.block_size)  # exactly the context fits
    with pytest.raises(ValueError, match=rf"^KV cache of {CFG.block_size + 1} positions exceeds the context of "
                                         rf"{CFG.block_size}$"):
        model.new_kv_cache(1, CFG.block_size + 1)


def test_writing_past_the_kv_cache_or_a_mask_of_the_wrong_width_is_a_clear_error():
    model = make_model()
    cache = model.new_kv_cache(1, 8)
    with pytest.raises(ValueError, match=r"^0 cached \+ 10 new tokens exceed the KV cache's 8 columns$"):
        model(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
    cache = model.new_kv_cache(2, 8)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 5\): expected \(2, 8\) \(batch, the KV cache"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5), kv_cache=cache)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 4\): expected \(2, 5\) \(batch, tokens\)"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"^the KV cache holds 2 rows but idx has 3$"):
        model(torch.zeros(3, 4, dtype=torch.long), kv_cache=model.new_kv_cache(2, 8))


def test_tied_embeddings_and_param_count():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    C, L, V, T = CFG.n_embd, CFG.n_layer, CFG.vocab_size, CFG.block_size
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    expected = V * C + T * C + L * per_block + 2 * C  # wte, wpe, blocks, ln_f
    assert model.num_params(non_embedding=False) == expected
    assert model.num_params() == expected - T * C


def test_optimizer_groups_no_decay_on_biases_norms_embeddings():
    """Decay exactly on the weight matrices of the Linear layers (the LM head is the tied token embedding, so
    it is not one of them), at the weight_decay asked for; every other parameter in the 0.0 group."""
    model = make_model()
    wte = model.transformer.wte.weight
    expected = {f"{name}.weight" for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and m.weight is not wte}
    assert len(expected) == 4 * CFG.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    all_names = {n for n, _ in model.named_parameters()}
    for wd in (0.1, 0.37):
        decay, no_decay = model.optimizer_groups(wd)
        assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
        names = {id(p): n for n, p in model.named_parameters()}
        decay_names = [names[id(p)] for p in decay["params"]]
        no_decay_names = [names[id(p)] for p in no_decay["params"]]
        assert set(decay_names) == expected and len(decay_names) == len(expected)
        assert set(no_decay_names) == all_names - expected and len(no_decay_names) == len(all_names - expected)
        assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= set(no_decay_names)


def test_scalar_head_shape_and_normalisation_buffers():
    head = ScalarHead(CFG.n_embd).double()
    h = torch.randn(3, 5, CFG.n_embd, dtype=torch.float64)
    raw = head(h)
    assert raw.shape == (3, 5)
    head.gain.fill_(2.0)
    head.offset.fill_(-1.0)
    assert torch.allclose(head(h), raw * 2 - 1)


def test_bad_checkpoints_are_errors_naming_the_file(tmp_path):
    """A model.pt whose config has a key this version lacks, or whose weights do not fit its config, and a
    training-state ckpt.pt passed as a reward model: each a RuntimeError naming the file, no KeyError or
    TypeError from deep inside."""
    from minirlhf import checkpoint as ck
    from minirlhf.model import ScalarModel

    model = make_model()
    path = str(tmp_path / "model.pt")
    payload = ck.model_payload(model, "sft")
    payload["model_config"]["rope"] = True
    ck.save_checkpoint(path, payload)
    with pytest.raises(RuntimeError, match=r"model.pt: model_config has keys this version .* \['rope'\]"):
        ck.load_model(path)
    payload = ck.model_payload(model, "sft")
    payload["model_config"]["n_layer"] += 1
    ck.save_checkpoint(path, payload)
    with pytest.raises(RuntimeError, match=r"model.pt: the weights do not fit the model its config describes"):
        ck.load_model(path)
    state = str(tmp_path / "ckpt.pt")  # what a stage's ckpt.pt holds: no model_config
    ck.save_checkpoint(state, {"model": ScalarModel(make_model()).state_dict(), "step": 3})
    with pytest.raises(RuntimeError, match=r"ckpt.pt is not a minirlhf model checkpoint .*pass the stage's model.pt"):
        ck.load_scalar_model(state)
