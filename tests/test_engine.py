"""Generation: KV cache vs naive, batching with left padding, sampling, log-probs, stopping."""

import pytest
import torch
import torch.nn.functional as F

from minirlhf.config import ModelConfig
from minirlhf.engine import cat_generations, generate, generate_naive, left_pad, response_logprobs, sample_next
from minirlhf.model import GPT

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=61)
EOS, PAD = 60, 59


def make_model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).double().eval()


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17]]


def test_left_pad():
    ids, mask = left_pad([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_greedy_kv_cache_equals_naive_token_for_token():
    model = make_model()
    fast = generate(model, PROMPTS, 30, EOS, PAD, temperature=0)
    slow = generate_naive(model, PROMPTS, 30, EOS, PAD, temperature=0)
    assert torch.equal(fast.response, slow.response)
    assert torch.equal(fast.response_mask, slow.response_mask)
    assert (fast.logprobs - slow.logprobs).abs().max().item() < 1e-10


def raise_eos_logit(model, bonus):
    """Add `bonus` to the EOS logit of every forward pass (a hook on the LM head), so that greedy decoding
    ends some rows early: a random model alone almost never emits EOS."""
    def hook(module, inputs, logits):  # logits (..., V)
        return logits + bonus * (torch.arange(logits.size(-1)) == EOS).to(logits.dtype)

    model.lm_head.register_forward_hook(hook)
    return model


def test_prompt_output_identical_alone_and_in_padded_batch():
    model = raise_eos_logit(make_model(1), 0.4)
    batch = generate(model, PROMPTS, 25, EOS, PAD, temperature=0)
    ended = batch.ended(EOS)
    assert 0 < ended.sum() < len(PROMPTS)  # rows that stop early and rows that run the whole budget
    assert batch.response.size(1) == 25
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], 25, EOS, PAD, temperature=0)
        n = alone.response.size(1)
        assert torch.equal(alone.response[0], batch.response[i, :n])
        assert batch.response_mask[i, n:].sum() == 0  # nothing real after the row stopped


def test_seeded_sampling_is_reproducible_and_matches_naive():
    model = make_model()
    kw = dict(temperature=0.9, top_k=20, top_p=0.9)
    a = generate(model, PROMPTS, 20, EOS, PAD, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, PROMPTS, 20, EOS, PAD, generator=torch.Generator().manual_seed(7), **kw)
    c = generate_naive(model, PROMPTS, 20, EOS, PAD, generator=torch.Generator().manual_seed(7), **kw)
    d = generate(model, PROMPTS, 20, EOS, PAD, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a.response, b.response) and torch.equal(a.response, c.response)
    assert not torch.equal(a.response, d.response)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_logprobs_are_under_the_sampling_temperature(temperature):
    model = make_model()
    out = generate(model, PROMPTS, 12, EOS, PAD, temperature=temperature, top_k=5,
                   generator=torch.Generator().manual_seed(0))
    logits = model(out.tokens, attention_mask=out.attention_mask)  # (B, P+N, V)
    P = out.prompt.size(1)
    logp = F.log_softmax(logits[:, P - 1:-1] / temperature, dim=-1)  # logits at t predict t+1
    recomputed = logp.gather(-1, out.response[..., None]).squeeze(-1) * out.response_mask
    assert (recomputed - out.logprobs).abs().max().item() < 1e-10


def test_stops_per_row_at_eos_and_masks_after():
    model = raise_eos_logit(make_model(), 0.2)
    out = generate(model, PROMPTS, 40, EOS, PAD, temperature=0)
    ended = [EOS in row for row in out.response.tolist()]
    assert 0 < sum(ended) < len(PROMPTS)  # some rows stop early, the others run the whole budget
    assert out.ended(EOS).tolist() == ended and out.response.size(1) == 40
    for i in range(len(PROMPTS)):
        row, m = out.response[i].tolist(), out.response_mask[i].tolist()
        if EOS in row:
            k = row.index(EOS)
            assert m[: k + 1] == [1] * (k + 1) and sum(m[k + 1:]) == 0
            assert all(t == PAD for t in row[k + 1:])
            assert out.ended(EOS)[i]
        else:
            assert sum(m) == len(row)


def test_eos_stop_with_constructed_model():
    # Make EOS the argmax everywhere: zero every (tied) embedding row except EOS's, and give the final
    # LayerNorm a constant output of 1, so logit(EOS) = C > 0 = every other logit.
    model = make_model()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[EOS].fill_(1.0)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    out = generate(model, PROMPTS, 10, EOS, PAD, temperature=0)
    assert out.response.size(1) == 1 and (out.response[:, 0] == EOS).all()
    assert out.response_mask.tolist() == [[1]] * len(PROMPTS)


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, 1.0, gen)[0]) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, 1.0, 0, 0.8, gen)[0]) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8
    draws = {int(sample_next(logits, 1.0, 0, 0.81, gen)[0]) for _ in range(400)}
    assert draws == {0, 1, 2}


def test_top_k_keeps_exactly_k_tokens_when_logits_tie():
    """Ties at the k-th logit (common with bf16 logits) still leave k tokens, not every tied one."""
    gen = torch.Generator().manual_seed(0)
    for logits, k in ((torch.tensor([[2.0, 1.0, 1.0, 1.0]]), 2), (torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 1)):
        draws = {int(sample_next(logits, 1.0, k, 1.0, gen)[0]) for _ in range(300)}
        assert len(draws) == k, (logits.tolist(), k, draws)


def test_bad_lengths_are_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, [[1] * 60], 10, EOS, PAD)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], 5, EOS, PAD)
    with pytest.raises(ValueError, match="^no prompts to generate from$"):
        generate(model, [], 5, EOS, PAD)
    for n in (0, -3):
        with pytest.raises(ValueError, match=f"^max_new_tokens must be >= 1, got {n}$"):
            generate(model, PROMPTS, n, EOS, PAD)


def test_padded_generations_score_the_same_and_keep_every_real_token():
    """Two shards sampled apart, padded to one width and stacked: the extra pads change no log-prob."""
    model = make_model(2)
    parts = [generate(model, PROMPTS[:2], 12, EOS, PAD, temperature=1.0, generator=torch.Generator().manual_seed(1)),
             generate(model, PROMPTS[2:], 7, EOS, PAD, temperature=1.0, generator=torch.Generator().manual_seed(2))]
    P = max(g.prompt.size(1) for g in parts) + 2  # wider than either shard needs
    N = max(g.response.size(1) for g in parts) + 3
    both = cat_generations(parts, P, N, PAD)
    assert both.tokens.shape == (4, P + N) and both.response_mask.shape == (4, N)
    row = 0
    for g in parts:
        n = g.response.size(1)
        for i in range(g.prompt.size(0)):
            # the real tokens, in order, are exactly the shard's, and the padding is masked
            assert both.tokens[row][both.attention_mask[row].bool()].tolist() == \
                g.tokens[i][g.attention_mask[i].bool()].tolist()
            assert torch.equal(both.logprobs[row, :n], g.logprobs[i]) and both.response_mask[row, n:].sum() == 0
            row += 1
    # log-probs recomputed on the padded batch equal the sampler's own (which saw no extra padding)
    recomputed = response_logprobs(model, both.tokens, both.attention_mask, P)  # (4, N)
    assert (recomputed * both.response_mask - both.logprobs).abs().max().item() < 1e-10
    with pytest.raises(ValueError, match="already"):
        parts[0].padded_to(1, N, PAD)


def test_filters_that_leave_no_token_are_clear_errors():
    """top_p <= 0 would drop every token and top_k < 0 would break topk: one ValueError naming the option,
    from sample_next and from every generator (which call it)."""
    logits = torch.zeros(2, 5)
    gen = torch.Generator().manual_seed(0)
    for top_p in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"top_p=.*\(0, 1\]"):
            sample_next(logits, 1.0, 0, top_p, gen)
    with pytest.raises(ValueError, match=r"top_k=-1: expected an integer >= 0"):
        sample_next(logits, 1.0, -1, 1.0, gen)
    model = make_model()
    with pytest.raises(ValueError, match=r"top_p=0.0"):
        generate(model, PROMPTS, 5, EOS, PAD, temperature=1.0, top_p=0.0, generator=gen)
    with pytest.raises(ValueError, match=r"top_k=-2"):
        generate_naive(model, PROMPTS, 5, EOS, PAD, temperature=1.0, top_k=-2, generator=gen)
    # a failed call leaves a model that was training in training mode (dropout stays on for the caller)
    model.train()
    for generator_fn in (generate, generate_naive):
        with pytest.raises(ValueError, match=r"top_p=0.0"):
            generator_fn(model, PROMPTS, 5, EOS, PAD, temperature=1.0, top_p=0.0, generator=gen)
        assert model.training, generator_fn.__name__
    model.eval()
    # the edges of the ranges still sample: top_p = 1 and top_k = 0 are "off", a tiny top_p keeps the argmax
    assert int(sample_next(torch.tensor([[0.0, 3.0, 1.0]]), 1.0, 0, 1e-9, gen)[0]) == 1
    sample_next(logits, 1.0, 0, 1.0, gen)
