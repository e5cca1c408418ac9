"""Best-of-n: the analytic KL against hand values, the choice against a naive one-sample-at-a-time loop,
n = 1 against plain sampling, and the per-n table against hand-computed rows."""

import math
from types import SimpleNamespace

import pytest
import torch

from minirlhf.best_of_n import best_of_n_responses, best_of_n_table, kl_best_of_n, parse_ns
from minirlhf.config import ModelConfig
from minirlhf.engine import generate
from minirlhf.model import GPT, ScalarModel

V, END, PAD = 64, 62, 63
# a stand-in tokenizer: a response decodes to its token ids, so the tests can read the tokens back
TOK = SimpleNamespace(end_id=END, pad_id=PAD, decode=lambda ids: " ".join(str(i) for i in ids))


def models(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=V)
    policy, rm = GPT(cfg), ScalarModel(GPT(cfg))
    prompts = [torch.randint(0, 60, (n,)).tolist() for n in (3, 6, 4, 5, 6)]  # different lengths: left padding
    return policy.eval(), rm.eval(), prompts


def test_kl_formula_hand_values():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == pytest.approx(0.19314718, abs=1e-8)  # ln 2 - 1/2
    assert kl_best_of_n(4) == pytest.approx(0.63629436, abs=1e-8)  # ln 4 - 3/4
    assert kl_best_of_n(16) == pytest.approx(1.83508872, abs=1e-8)  # ln 16 - 15/16 = 2.77258872 - 0.9375
    with pytest.raises(ValueError, match="n >= 1"):
        kl_best_of_n(0)


@pytest.mark.parametrize("penalty", [0.0, 5.0])
def test_best_of_n_picks_the_reward_model_argmax(penalty):
    """Naive reference: score every sample alone (no padding, no batch) and keep the best in a Python loop."""
    policy, rm, prompts = models()
    n = 6
    bon = best_of_n_responses(policy, rm, TOK, prompts, n, max_new_tokens=8, seed=3, batch_size=12,
                              missing_eos_penalty=penalty)
    assert len(bon.texts) == len(prompts) and all(len(t) == n for t in bon.texts)
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            best_j, best_score = None, -math.inf
            for j, text in enumerate(bon.texts[i]):
                response = [int(t) for t in text.split()]
                ids = torch.tensor([prompt + response])  # (1, P + N), one unpadded sequence
                score = rm.score(ids, torch.ones_like(ids)).item()
                assert score == pytest.approx(bon.proxy[i, j].item(), abs=1e-4)
                if END not in response:
                    score -= penalty
                if score > best_score:
                    best_j, best_score = j, score
            assert bon.best[i].item() == best_j
            assert bon.best_texts[i] == bon.texts[i][best_j]
    if penalty:  # the penalty mattered: some prompt's favourite lacked <|end|> and lost to one that has it
        assert (bon.best != bon.proxy.argmax(dim=1)).any()


def test_n_equal_one_is_plain_sampling():
    policy, rm, prompts = models(1)
    bon = best_of_n_responses(policy, rm, TOK, prompts, 1, temperature=1.0, max_new_tokens=8, seed=7, batch_size=64)
    g = generate(policy, prompts, 8, END, PAD, temperature=1.0, generator=torch.Generator().manual_seed(7))
    plain = [TOK.decode([t for t, k in zip(row, keep) if k]) for row, keep in
             zip(g.response.tolist(), g.response_mask.tolist())]
    assert [t[0] for t in bon.texts] == plain
    assert bon.best.tolist() == [0] * len(prompts)


def test_table_rows_by_hand():
    # two prompts, a pool of 4 samples each
    proxy = torch.tensor([[0.1, 0.9, 0.5, 2.0],
                          [0.3, 0.2, 0.8, 0.1]])
    gold = torch.tensor([[0.5, -0.2, 0.7, -1.0],
                         [0.4, 0.9, 0.0, 0.6]])
    ended = torch.tensor([[True, True, True, False],
                          [True, True, True, True]])
    rows = best_of_n_table(proxy, gold, ended, [1, 2, 4], missing_eos_penalty=5.0)
    # n=1: sample 0 of each; n=2: proxy picks sample 1 then 0; n=4: sample 3 of prompt 0 lacks <|end|>
    # (2.0 - 5.0 < 0.9), so sample 1; prompt 1 picks sample 2
    assert rows[0] == {"n": 1, "gold": 0.45, "proxy": 0.2, "gold_oracle": 0.45, "kl_analytic": 0.0}
    assert rows[1] == {"n": 2, "gold": 0.1, "proxy": 0.6, "gold_oracle": 0.7, "kl_analytic": 0.1931}
    assert rows[2] == {"n": 4, "gold": -0.1, "proxy": 0.85, "gold_oracle": 0.8, "kl_analytic": 0.6363}
    with pytest.raises(ValueError, match="only 4 samples"):
        best_of_n_table(proxy, gold, ended, [8])


def test_parse_ns():
    assert parse_ns("16,1,4,4, 2") == [1, 2, 4, 16]
    for bad in ("", "0,2", "a,b", "1.5"):
        with pytest.raises(ValueError, match="--ns="):
            parse_ns(bad)
