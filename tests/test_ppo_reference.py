"""The PPO loop against a naive reference: one iteration recomputed row by row in plain Python.

Pins the loop's arithmetic that the ratio-1 / KL-0 tests cannot see: pi_old, V_old, the k1-shaped rewards with
the score at the last real token, GAE over real tokens only, advantages whitened over real tokens, every
minibatch of every epoch covering the batch once, the clip ranges, every logged metric, the KL controller's
update (Ziegler et al. 2019, sec. 2.2) with the logged k1 KL, the annealed learning rate, and a reference that
never moves; plus vf_coef = 0 leaving the value model alone and `run` handing `train_ppo` a separate reference.
"""
import copy

import pytest
import torch

import minirlhf.ppo as ppo
from minirlhf.ppo import train_ppo
from resume_check import rows
from test_ppo import END, P, TOK, cfg, low_token_share, setup
from conftest import untrained_reward_model


def recorder(monkeypatch):
    """What the loop hands its scoring pass, its two losses and its optimizer, recorded call by call."""
    calls = {"fwd": [], "pg": [], "vf": [], "lr": []}
    real_pav, real_pg, real_vf, real_adamw = ppo.policy_and_values, ppo.ppo_policy_loss, ppo.ppo_value_loss, ppo.make_adamw

    def pav(pol, critic, tokens, attn, prompt_len):
        calls["fwd"].append((tokens.clone(), attn.clone()))
        return real_pav(pol, critic, tokens, attn, prompt_len)

    def pg(*a):
        out = real_pg(*a)
        calls["pg"].append(([x.detach().clone() for x in a[:4]], a[4]))
        return out

    def vf(*a):
        out = real_vf(*a)
        calls["vf"].append(([x.detach().clone() for x in a[:4]], a[4]))
        return out

    def adamw(*a, **k):
        opt = real_adamw(*a, **k)
        opt.register_step_pre_hook(lambda o, args, kw: calls["lr"].append([g["lr"] for g in o.param_groups]))
        return opt

    for name, f in (("policy_and_values", pav), ("ppo_policy_loss", pg), ("ppo_value_loss", vf), ("make_adamw", adamw)):
        monkeypatch.setattr(ppo, name, f)
    return calls


def test_one_ppo_iteration_against_a_naive_reference(tmp_path, monkeypatch):
    # T = 0.7, gamma = 0.9, lam = 0.8, 2 epochs x 2 minibatches, 2 iterations; a reference perturbed so KL != 0
    policy, ref, value, prompts = setup()
    torch.manual_seed(7)
    with torch.no_grad():  # a reference unlike the policy: KL != 0 from the first rollout
        for p in ref.parameters():
            p.add_(0.06 * torch.randn_like(p))
    pi0, ref0, v0 = copy.deepcopy(policy), copy.deepcopy(ref), copy.deepcopy(value)
    calls = recorder(monkeypatch)
    T, beta, gamma, lam, lr = 0.7, 0.2, 0.9, 0.8, 1e-2
    c = cfg(tmp_path, iterations=2, batch_size=16, minibatch_size=8, ppo_epochs=2, temperature=T, kl_coef=beta,
            gamma=gamma, lam=lam, lr=lr, missing_eos_penalty=1.0, max_new_tokens=10)
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, c, str(tmp_path))
    r1, r2 = rows(tmp_path)

    tokens, attn = calls["fwd"][0]  # the scoring pass of iteration 1: the batch in rollout order
    B, N = tokens.size(0), tokens.size(1) - P
    resp, m = tokens[:, P:], attn[:, P:].bool()
    with torch.no_grad():
        lsm = torch.log_softmax(pi0(tokens, attention_mask=attn)[:, P - 1:-1] / T, -1)
        lp = lsm.gather(-1, resp[..., None])[..., 0]
        rlp = torch.log_softmax(ref0(tokens, attention_mask=attn)[:, P - 1:-1] / T, -1).gather(-1, resp[..., None])[..., 0]
        vals = v0(tokens, attn)[:, P - 1:-1]
        ent = -(lsm.exp() * lsm).sum(-1)
        share = low_token_share(tokens, attn)
    adv, ret = torch.zeros(B, N), torch.zeros(B, N)
    scores, kl1, kl3 = [], [], []
    for b in range(B):  # plain Python over each row's real tokens only
        idx = [n for n in range(N) if m[b, n]]
        s = share[b].item() - 1.0 * (not any(resp[b, n].item() == END for n in idx))
        x = [(lp[b, n] - rlp[b, n]).item() for n in idx]
        scores.append(s)
        kl1.append(sum(x))
        kl3.append(sum(torch.expm1(torch.tensor(-v)).item() + v for v in x))
        rew = [-beta * v for v in x]
        rew[-1] += s
        a = 0.0
        for j in reversed(range(len(idx))):
            nv = vals[b, idx[j + 1]].item() if j + 1 < len(idx) else 0.0
            a = rew[j] + gamma * nv - vals[b, idx[j]].item() + gamma * lam * a
            adv[b, idx[j]], ret[b, idx[j]] = a, a + vals[b, idx[j]].item()
    white = (adv - adv[m].mean()) / (adv[m].var() + 1e-8).sqrt()

    def row_of(t):
        return [b for b in range(B) if torch.equal(tokens[b], t)][0]

    # minibatches: every epoch covers every row once; pi_old, V_old, advantages, returns as computed naively
    for epoch in range(2):
        seen = []
        for k in (2 * epoch, 2 * epoch + 1):
            mb_tokens = calls["fwd"][1 + k][0]
            (new, old, a, mask), eps = calls["pg"][k]
            (_, old_v, rt, _), clip_v = calls["vf"][k]
            assert eps == 0.2 and clip_v == 0.2
            for i, t in enumerate(mb_tokens):
                b = row_of(t)
                seen.append(b)
                mm = m[b]
                assert torch.equal(mask[i].bool(), mm)
                torch.testing.assert_close(old[i][mm], lp[b][mm], atol=1e-5, rtol=0)
                torch.testing.assert_close(old_v[i][mm], vals[b][mm], atol=1e-5, rtol=0)
                torch.testing.assert_close(a[i][mm], white[b][mm], atol=1e-4, rtol=0)
                torch.testing.assert_close(rt[i][mm], ret[b][mm], atol=1e-4, rtol=0)
        assert sorted(seen) == list(range(B))

    mt = m.float()
    ev = 1 - ((ret - vals)[m].var() / ret[m].var())
    expected = {"objective/kl": sum(kl1) / B, "objective/kl_k3": sum(kl3) / B, "objective/scores": sum(scores) / B,
                "objective/entropy": ent[m].mean().item(), "objective/non_score_reward": -beta * sum(kl1) / B,
                "objective/rlhf_reward": (sum(scores) - beta * sum(kl1)) / B, "value/explained_variance": ev.item(),
                "response/length": mt.sum(1).mean().item(), "kl_coef": beta, "lr": lr}

    def clipfracs(k):
        (new, old, a, mask), _ = calls["pg"][k]
        (nv, ov, rt, _), _ = calls["vf"][k]
        mk = mask.bool()
        ratio = (new - old).exp()
        pc = (((a > 0) & (ratio > 1.2)) | ((a < 0) & (ratio < 0.8)))[mk].float().mean()
        vc = ((ov + (nv - ov).clamp(-0.2, 0.2) - rt) ** 2 > (nv - rt) ** 2)[mk].float().mean()
        return pc.item(), vc.item(), ((ratio - 1) - (new - old))[mk].mean().item()

    cf = [clipfracs(k) for k in range(4)]
    expected["policy/clipfrac"] = sum(x[0] for x in cf) / 4
    expected["value/clipfrac"] = sum(x[1] for x in cf) / 4
    expected["policy/approx_kl"] = sum(x[2] for x in cf) / 4
    for k, v in expected.items():
        assert r1[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # the controller: Ziegler et al.'s update with the logged k1 KL, shown in the next row
    assert r2["kl_coef"] == pytest.approx(beta * (1 + min(max(r1["objective/kl"] - 1, -0.2), 0.2) * 16 / 500), rel=1e-9)
    # linear annealing, logged and given to the optimizer: 4 steps at lr, 4 at lr / 2
    assert r2["lr"] == pytest.approx(lr / 2)
    assert [g[0] for g in calls["lr"]] == pytest.approx([lr] * 4 + [lr / 2] * 4)
    # the reference never moves
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), ref0.state_dict().values()))


def test_vf_coef_zero_leaves_the_value_model_untouched(tmp_path):
    # the value loss is weighted by vf_coef: at 0 the value model gets no gradient at all
    policy, ref, value, prompts = setup()
    v0 = copy.deepcopy(value.state_dict())
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, iterations=1, vf_coef=0.0), str(tmp_path))
    assert all(torch.equal(value.state_dict()[k], v) for k, v in v0.items())




def test_run_gives_train_ppo_a_separate_frozen_reference(base, tmp_path, monkeypatch):
    # a reference aliased to the policy (or sharing its weights) would make the KL penalty 0 forever
    from minirlhf.config import PPOConfig, make_config

    rm = untrained_reward_model(base, tmp_path)
    seen = {}

    def fake_train(policy, ref, *a, **k):
        seen.update(policy=policy, ref=ref)
        return {"interrupted": True, "iterations": 0}

    monkeypatch.setattr(ppo, "train_ppo", fake_train)
    ppo.run(make_config(PPOConfig, overrides=dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"],
                                                  reward_model=rm, prompts=base["prompts"], batch_size=4,
                                                  minibatch_size=4, progress=False)))
    ptrs = {p.data_ptr() for p in seen["policy"].parameters()}
    assert seen["ref"] is not seen["policy"] and not any(p.data_ptr() in ptrs for p in seen["ref"].parameters())
