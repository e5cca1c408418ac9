"""The static-shape decode step and `generate` vs its references (`GPT.forward` + KVCache, and no cache)."""

import pytest
import torch

from minirlhf.config import ModelConfig
from minirlhf.engine import (
    StaticKVCache,
    decode_step,
    generate,
    generate_kv_reference,
    generate_naive,
    left_pad,
)
from minirlhf.model import GPT

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=61)
EOS, PAD = 60, 59
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17]]


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(CFG).to(dtype).eval()


def test_decode_step_equals_model_forward_with_kv_cache():
    """Feed the same tokens through decode_step and through GPT.forward with a KVCache: same logits."""
    model = make_model()
    prompt, prompt_mask = left_pad(PROMPTS, PAD)
    B, P = prompt.shape
    S = P + 6
    key_mask = torch.ones(B, S, dtype=torch.long)
    key_mask[:, :P] = prompt_mask
    ref_cache, cache = model.new_kv_cache(B, S), StaticKVCache(CFG, B, S, "cpu", torch.float64)
    prefill_cache = model.new_kv_cache(B, P)
    with torch.no_grad():
        model(prompt, attention_mask=key_mask, kv_cache=ref_cache)
        model(prompt, attention_mask=prompt_mask, kv_cache=prefill_cache)
        cache.fill(prefill_cache)
        position = prompt_mask.sum(1) - 1  # (B,)
        for t in range(6):
            token = torch.randint(0, 59, (B,))
            position = position + 1
            want = model(token[:, None], attention_mask=key_mask, position_ids=position[:, None],
                         kv_cache=ref_cache)[:, -1]  # (B, V)
            got = decode_step(model, cache.k, cache.v, cache.columns, key_mask.bool(), token, position,
                              torch.tensor([P + t]))
            assert (got - want).abs().max().item() < 1e-10
    for layer in range(CFG.n_layer):  # the same keys and values in the same columns
        assert (cache.k[layer] - ref_cache.k[layer]).abs().max().item() < 1e-12
        assert (cache.v[layer] - ref_cache.v[layer]).abs().max().item() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_greedy_identical_to_both_references(dtype):
    model = make_model(dtype=dtype)
    fast = generate(model, PROMPTS, 30, EOS, PAD, temperature=0)
    kv = generate_kv_reference(model, PROMPTS, 30, EOS, PAD, temperature=0)
    slow = generate_naive(model, PROMPTS, 30, EOS, PAD, temperature=0)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for ref in (kv, slow):
        assert torch.equal(fast.response, ref.response)
        assert torch.equal(fast.response_mask, ref.response_mask)
        assert (fast.logprobs - ref.logprobs).abs().max().item() < tol


def test_seeded_sampling_reproducible_and_equal_to_references():
    model = make_model(2)
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)

    def run(fn, seed):
        return fn(model, PROMPTS, 24, EOS, PAD, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = run(generate, 3), run(generate, 3)
    assert torch.equal(a.response, b.response) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.response, run(generate_kv_reference, 3).response)
    assert torch.equal(a.response, run(generate_naive, 3).response)
    assert not torch.equal(a.response, run(generate, 4).response)


@pytest.mark.parametrize("sync_every", [0, 1, 3, 100])
def test_eos_check_interval_does_not_change_outputs(sync_every):
    # Rows stop at different steps: the final LayerNorm outputs a constant vector of ones, so every
    # logit is the sum of its (tied) embedding row; EOS's row is set so that p(EOS) is about 0.15.
    model = make_model(3)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[EOS].fill_(0.07)
    base = generate(model, PROMPTS * 2, 20, EOS, PAD, sync_every=8, generator=torch.Generator().manual_seed(0))
    out = generate(model, PROMPTS * 2, 20, EOS, PAD, sync_every=sync_every,
                   generator=torch.Generator().manual_seed(0))
    ends = base.response_mask.sum(1)  # (B,) tokens per row
    assert base.ended(EOS).any() and ends.min() < ends.max()  # the case under test: rows stop at different steps
    assert torch.equal(out.response, base.response) and torch.equal(out.response_mask, base.response_mask)


def test_all_rows_stop_early_and_trailing_columns_dropped():
    model = make_model()
    with torch.no_grad():  # EOS is the argmax everywhere (see test_engine.test_eos_stop_with_constructed_model)
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[EOS].fill_(1.0)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    out = generate(model, PROMPTS, 30, EOS, PAD, temperature=0, sync_every=4)
    assert out.response.shape == (len(PROMPTS), 1) and (out.response[:, 0] == EOS).all()


def test_training_mode_restored_and_no_grad_state():
    model = make_model().train()
    out = generate(model, PROMPTS, 5, EOS, PAD, temperature=0)
    assert model.training and not out.logprobs.requires_grad


def test_prompt_at_full_context():
    model = make_model()
    out = generate(model, [[1] * 60, [2, 3]], 4, EOS, PAD, temperature=0)  # P + N == block_size
    ref = generate_naive(model, [[1] * 60, [2, 3]], 4, EOS, PAD, temperature=0)
    assert torch.equal(out.response, ref.response)



def test_generate_under_bf16_autocast_with_float32_weights():
    """Under bf16 autocast the keys and values come out bf16 while the cache is float32: the decode step
    casts them to the cache's dtype (writing them raised "Index put requires the source and destination
    dtypes match" before), and the greedy tokens equal the GPT.forward + KVCache reference's."""
    model = make_model(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, PROMPTS, 4, EOS, PAD, temperature=0)
        ref = generate_kv_reference(model, PROMPTS, 4, EOS, PAD, temperature=0)
    assert out.response.shape == (len(PROMPTS), 4)
    assert torch.equal(out.response, ref.response) and torch.isfinite(out.logprobs).all()


def test_the_cache_holds_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast the cache is allocated in bf16 (half the memory, and no cast of the whole
    cache back to bf16 at every step); outside autocast in the weights' dtype. The tokens do not change."""
    import minirlhf.engine as engine
    dtypes, real = [], engine._cache_for
    monkeypatch.setattr(engine, "_cache_for", lambda model, B, S, dtype, keep: dtypes.append(dtype) or
                        real(model, B, S, dtype, keep))
    model = make_model(dtype=torch.float32)
    plain = generate(model, PROMPTS, 6, EOS, PAD, temperature=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, PROMPTS, 6, EOS, PAD, temperature=0)
        ref = generate_kv_reference(model, PROMPTS, 6, EOS, PAD, temperature=0)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert torch.equal(out.response, ref.response) and plain.response.shape == out.response.shape

@pytest.mark.slow
def test_compiled_decode_step_equals_eager_and_reuses_its_cache():
    """compile=True (inductor on CPU; CUDA graphs on CUDA) gives the eager outputs, twice in a row:
    the second call reuses the kept cache, so nothing from the first rollout may leak into it."""
    model = make_model(dtype=torch.float32)
    other = [[7, 8], [9], [10, 11, 12, 13], [14, 15, 16]]
    for prompts in (PROMPTS, other):
        want = generate(model, prompts, 12, EOS, PAD, temperature=0)
        got = generate(model, prompts, 12, EOS, PAD, temperature=0, compile=True)
        assert torch.equal(got.response, want.response)
        assert (got.logprobs - want.logprobs).abs().max().item() < 1e-4
