"""The GRPO loop against a naive reference: one iteration recomputed row by row in plain Python.

Pins what the ratio-1 / KL-0 tests cannot see: each row answers the prompt its reward was computed for and a
group's G rows share one prompt, advantages normalised within each group (Shao et al. 2024, sec. 4.1.2; with
and without the std), pi_old and the reference's log-probs, the loss's arguments and its value (eq. 3: clipped
ratio, k3 KL towards the reference, per-sequence token means), every logged metric and the annealed learning
rate; and that whatever sits in pad positions changes nothing.
"""
import copy

import pytest
import torch

import minirlhf.grpo as grpo
from minirlhf.grpo import train_grpo
from resume_check import rows
from test_grpo import END, P, TOK, cfg, low_token_share, setup


@pytest.mark.parametrize("scale", [True, False])
def test_one_grpo_iteration_against_a_naive_reference(tmp_path, monkeypatch, scale):
    # T = 0.7, 4 prompts x G = 4, 2 epochs x 2 minibatches, 2 iterations; a reference perturbed so KL != 0
    policy, ref, prompts = setup()
    torch.manual_seed(7)
    with torch.no_grad():  # a reference unlike the policy: the KL term is not 0
        for p in ref.parameters():
            p.add_(0.06 * torch.randn_like(p))
    pi0, ref0 = copy.deepcopy(policy), copy.deepcopy(ref)
    calls = {"reward": [], "lp": [], "loss": [], "lr": []}
    real_lp, real_loss, real_adamw = grpo.response_logprobs, grpo.grpo_loss, grpo.make_adamw

    def reward(g, idx):  # depends on the prompt: the group baseline must remove it
        calls["reward"].append((g.tokens.clone(), g.attention_mask.clone(), list(idx)))
        return low_token_share(g, idx) + 0.1 * torch.tensor(idx, dtype=torch.float32)

    def lp(model, tokens, *a, **k):
        calls["lp"].append(tokens.clone())
        return real_lp(model, tokens, *a, **k)

    def loss(*a, **k):
        calls["loss"].append(([x.detach().clone() for x in a], k))
        return real_loss(*a, **k)

    def adamw(*a, **k):
        opt = real_adamw(*a, **k)
        opt.register_step_pre_hook(lambda o, args, kw: calls["lr"].append(o.param_groups[0]["lr"]))
        return opt

    for name, f in (("response_logprobs", lp), ("grpo_loss", loss), ("make_adamw", adamw)):
        monkeypatch.setattr(grpo, name, f)
    T, beta, lr, G = 0.7, 0.04, 1e-2, 4
    c = cfg(tmp_path, iterations=2, prompts_per_iteration=4, group_size=G, minibatch_size=8, ppo_epochs=2,
            temperature=T, beta=beta, lr=lr, anneal_lr=True, missing_eos_penalty=1.0, scale_rewards=scale)
    train_grpo(policy, ref, reward, prompts, TOK, c, str(tmp_path))
    r1, r2 = rows(tmp_path)

    tokens, attn, idx = calls["reward"][0]
    B = tokens.size(0)
    resp, m = tokens[:, P:], attn[:, P:].bool()
    # each row answers the prompt the reward was told, and the G rows of a group share one prompt
    for b in range(B):
        assert tokens[b, :P].tolist() == prompts[idx[b]]
        assert idx[b] == idx[b - b % G]
    with torch.no_grad():
        lsm = torch.log_softmax(pi0(tokens, attention_mask=attn)[:, P - 1:-1] / T, -1)
        old = lsm.gather(-1, resp[..., None])[..., 0]
        rlp = torch.log_softmax(ref0(tokens, attention_mask=attn)[:, P - 1:-1] / T, -1).gather(-1, resp[..., None])[..., 0]
        ent = -(lsm.exp() * lsm).sum(-1)
        share = (((resp < 30) & m).float().sum(1) / m.float().sum(1))
    r = [share[b].item() + 0.1 * idx[b] - (0.0 if (resp[b][m[b]] == END).any() else 1.0) for b in range(B)]
    adv = []
    for g0 in range(0, B, G):
        grp = torch.tensor(r[g0:g0 + G], dtype=torch.float32)
        a = grp - grp.mean()
        adv += (a / (grp.std() + 1e-4) if scale else a).tolist()
    adv = torch.tensor(adv)

    def row_of(t):
        return [b for b in range(B) if torch.equal(tokens[b], t)][0]

    k3 = lambda lp_, ref_: torch.expm1(ref_ - lp_) - (ref_ - lp_)  # noqa: E731
    losses, cfs, rmeans, rmax, akl = [], [], [], [], []
    for epoch in range(2):
        seen = []
        for k in (2 * epoch, 2 * epoch + 1):
            (new, o, rf, a, mask), kw = calls["loss"][k]
            assert kw == {"epsilon": 0.2, "beta": beta}
            bs = [row_of(t) for t in calls["lp"][2 + k]]
            seen += bs
            assert torch.equal(mask.bool(), m[bs])
            mk = mask.bool()
            torch.testing.assert_close(o[mk], old[bs][mk], atol=1e-5, rtol=0)
            torch.testing.assert_close(rf[mk], rlp[bs][mk], atol=1e-5, rtol=0)
            torch.testing.assert_close(a, adv[bs], atol=1e-5, rtol=1e-5)
            ratio = (new - o).exp()
            per_tok = -torch.min(ratio * a[:, None], ratio.clamp(0.8, 1.2) * a[:, None]) + beta * k3(new, rf)
            losses.append(torch.stack([per_tok[i][mk[i]].mean() for i in range(len(bs))]).mean().item())
            cfs.append((ratio.clamp(0.8, 1.2) * a[:, None] < ratio * a[:, None])[mk].float().mean().item())
            rmeans.append(ratio[mk].mean().item())
            rmax.append(ratio[mk].max().item())
            akl.append(((ratio - 1) - (new - o))[mk].mean().item())
        assert sorted(seen) == list(range(B))
    rt = torch.tensor(r)
    kk = k3(old, rlp)
    expected = {"reward/mean": rt.mean().item(), "reward/std": rt.std().item(), "lr": lr,
                "reward/zero_std_groups": sum(len(set(r[g0:g0 + G])) == 1 for g0 in range(0, B, G)) / (B // G),
                "objective/kl": sum(kk[b][m[b]].mean().item() for b in range(B)) / B,
                "objective/kl_sum": sum(kk[b][m[b]].sum().item() for b in range(B)) / B,
                "objective/entropy": ent[m].mean().item(), "policy/loss": sum(losses) / 4,
                "policy/clipfrac": sum(cfs) / 4, "policy/ratio_mean": sum(rmeans) / 4, "policy/ratio_max": max(rmax),
                "policy/approx_kl": sum(akl) / 4, "response/length": m.float().sum(1).mean().item()}
    assert r1["policy/clipfrac"] > 0 and r1["objective/kl"] > 0
    for key, v in expected.items():
        assert r1[key] == pytest.approx(v, rel=1e-4, abs=1e-6), key
    assert r2["lr"] == pytest.approx(lr / 2) and calls["lr"] == pytest.approx([lr] * 4 + [lr / 2] * 4)


def test_garbage_in_pad_positions_changes_nothing(tmp_path, monkeypatch):
    """Whatever the log-probs and entropies hold on pads, the run (weights and every logged number) is the same."""
    real_lp = grpo.response_logprobs

    def run(out, garbage):
        policy, ref, prompts = setup()
        out.mkdir()

        ncall = []

        def lp(model, tokens, attn, P, *a, **k):  # a different garbage value on the pads of every call
            res = real_lp(model, tokens, attn, P, *a, **k)
            ncall.append(1)
            pads = (1 - attn[:, P:].float()) * (len(ncall) % 5 + 1) / 2
            if not garbage:
                return res
            return tuple(x + pads for x in res) if isinstance(res, tuple) else res + pads

        monkeypatch.setattr(grpo, "response_logprobs", lp)
        train_grpo(policy, ref, low_token_share, prompts, TOK,
                   cfg(out, iterations=2, minibatch_size=8, ppo_epochs=2, lr=1e-2, beta=0.04), str(out))
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(out)], policy.state_dict()

    (rows_a, w_a), (rows_b, w_b) = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert rows_a == rows_b
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_a_group_with_nearly_equal_rewards_still_has_a_signal():
    # only exactly equal rewards make a group signal-free; 0, 0, 0, 5e-4 differ
    _, zero_std = grpo.group_advantages_with_signal(torch.tensor([0.0, 0.0, 0.0, 5e-4]), 4)
    assert zero_std.tolist() == [False]
