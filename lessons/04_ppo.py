"""Lesson 04 -- PPO, one rollout taken apart by hand, then a short run.

Run:      python lessons/04_ppo.py          (preset tiny: about 10 minutes on a 2-core CPU after lesson 03)
          python lessons/04_ppo.py micro    (seconds)
Reads:    out/<preset>/sft/ (lesson 02), out/<preset>/reward/ (lesson 03), out/<preset>/world/
Writes:   out/<preset>/ppo/ (the pipeline's PPO run, reused if it exists), out/<preset>/ppo_gold/,
          out/<preset>/pairs_ranked/, reward_ranked/ and ppo_ranked/ (step 5), plots/ppo_curves_<preset>.png

What you should see
  1. One rollout as a table, token by token: the policy's log-prob (at the sampling temperature), the
     reference's, their difference k1 (exactly 0 now: the policy IS the reference before any update),
     the shaped reward (-kl_coef * k1, plus the reward model's score on the last token only), the value
     model's prediction, the GAE advantage and the return (advantage + value: the value model's target).
     With gamma = 1 and lam = 1 the return would be the plain sum of the rewards still to come; lam < 1
     mixes in the value model's own predictions (less variance, some bias).
  2. A short PPO run: the reward-model score rises while the KL to the SFT model grows from 0 and the
     adaptive controller moves kl_coef to keep that KL near its target.
  3. The same prompts before and after, with the gold judge's verdict -- the score PPO optimised is a
     proxy, and the gold column says whether it was a good one.
  4. The same loop against the gold judge instead of the reward model. On tiny (measured): held-out gold
     0.23 (SFT) -> 0.06 at KL 1.6 against the reward model, but -> 0.30 at KL 0.19 against the gold judge
     (training-split prompts 0.66 -> 0.55 and -> 0.67). The algorithm climbs whatever it is given; what it
     is given decides whether that helps. How far it climbs is another matter: against the gold judge,
     4x the learning rate or 4x the rollout batch end at 0.33-0.34 held-out (KL 0.80-0.83; training
     split 0.72-0.76), below the SFT model merely sampled at T = 0.5 (0.38 at KL 0.30 over evaluation
     seeds 1-3; 0.36 in lesson 08), and 10x the rate collapses (0.19 at KL 4.5).
  5. The same loop against a reward model trained only on ranked pairs of the SFT model's own samples
     (the best against the worst of 8): held-out gold at or a little above SFT's, where the pipeline's
     reward model lowers it (tiny, three evaluation seeds: 0.31 and 0.10 against SFT's 0.24, 0.24 with
     another training seed; against the gold judge 0.34).

Deliberate simplifications: the library's default settings (lesson 06 runs long enough
to over-optimise); one prompt in the hand-worked rollout.
"""

# %% Setup
import json
import os
import sys

import torch

from minirlhf import ops, rl
from minirlhf.chat import render_prompt
from minirlhf.checkpoint import load_model, load_scalar_model
from minirlhf.config import PPOConfig, RewardConfig, make_config
from minirlhf.engine import generate, response_logprobs
from minirlhf.plots import plt, read_metrics
from minirlhf.ppo import response_values
from minirlhf.ppo import run as ppo
from minirlhf.reward import run as reward
from minirlhf.sample import tokenizer_for
from minirlhf.world import judge
from prerequisites import compare_over_seeds, ensure, ranked_pairs

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
ensure(preset, out_dir, upto="reward")  # the stages before PPO, reused when lessons 00-03 (or the pipeline) ran
sft_path, rm_path = os.path.join(base, "sft", "model.pt"), os.path.join(base, "reward", "model.pt")
tok = tokenizer_for(sft_path)
policy, _ = load_model(sft_path)
reference, _ = load_model(sft_path)
reward_model, _ = load_scalar_model(rm_path)
value_model, _ = load_scalar_model(rm_path)  # InstructGPT: the value model starts as the reward model
cfg = make_config(PPOConfig, preset=preset)

# %% 1. One rollout, by hand
prompt = "What is the capital of France?"
ids = render_prompt(tok, prompt)
torch.manual_seed(0)
with torch.no_grad():
    g = generate(policy, [ids], cfg.max_new_tokens, tok.end_id, tok.pad_id, temperature=cfg.temperature,
                 generator=torch.Generator().manual_seed(0))
    P = g.prompt.size(1)
    mask = g.response_mask.float()  # (1, N)
    logprobs = response_logprobs(policy, g.tokens, g.attention_mask, P, cfg.temperature)  # (1, N)
    ref_logprobs = response_logprobs(reference, g.tokens, g.attention_mask, P, cfg.temperature)  # (1, N)
    score = reward_model.score(g.tokens, g.attention_mask)  # (1,)
    values = response_values(value_model, g.tokens, g.attention_mask, P)  # (1, N)
rewards = rl.shape_rewards(score, logprobs, ref_logprobs, mask, cfg.kl_coef)  # (1, N)
advantages, returns = rl.compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)  # (1, N) each
k1 = ops.kl_k1(logprobs, ref_logprobs)
text = tok.decode([t for t, m in zip(g.response[0].tolist(), g.response_mask[0].tolist()) if m])
print(f"prompt: {prompt!r}\nresponse: {text!r}")
print(f"reward-model score {score.item():+.3f} (read at the last real token), gold {judge(prompt, text):+.3f}\n")
print(f"{'t':>3} {'token':<14}{'logp':>8}{'ref':>8}{'k1':>8}{'reward':>9}{'value':>8}{'return':>8}{'adv':>8}")
for t in range(int(mask.sum())):
    piece = repr(tok.decode([g.response[0, t].item()]))[1:-1][:12]
    print(f"{t:>3} {piece:<14}{logprobs[0, t]:>8.3f}{ref_logprobs[0, t]:>8.3f}{k1[0, t]:>8.3f}"
          f"{rewards[0, t]:>9.3f}{values[0, t]:>8.3f}{returns[0, t]:>8.3f}{advantages[0, t]:>8.3f}")
print("\nk1 is 0 everywhere: before any update the policy is the reference. The whole score sits on the last"
      "\ntoken; GAE carries it back to every earlier token through the value model's predictions.")

# %% 2. A short PPO run (the library's loop, with its banners in minirlhf/ppo.py)
summary = ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir}))  # reused after the pipeline
stage_dir = os.path.join(base, "ppo")
rows = read_metrics(os.path.join(stage_dir, "metrics.jsonl"))
it = [r["iteration"] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
axes[0].plot(it, [r["objective/scores"] for r in rows], label="reward-model score")
axes[0].plot(it, [r["objective/rlhf_reward"] for r in rows], label="score - kl_coef * KL")
evals = [r for r in rows if "eval/gold" in r]
axes[0].plot([r["iteration"] for r in evals], [r["eval/gold"] for r in evals], "ko-", label="gold (held-out)")
axes[0].set_title("reward")
axes[0].legend(fontsize=8)
axes[1].plot(it, [r["objective/kl"] for r in rows], label="KL (k1, nats per response)")
axes[1].plot(it, [r["objective/kl_k3"] for r in rows], label="KL (k3)")
axes[1].set_title("KL to the SFT model")
axes[1].legend(fontsize=8)
axes[2].plot(it, [r["kl_coef"] for r in rows])
axes[2].set_title("adaptive kl_coef")
for ax in axes:
    ax.set_xlabel("PPO iteration")
fig.suptitle(f"PPO on the {preset} preset")
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/ppo_curves_{preset}.png", dpi=120)
print(f"\nplot saved to plots/ppo_curves_{preset}.png")
print(f"held-out gold {summary.get('gold')}, proxy {summary.get('proxy')}, KL {summary.get('kl_k1')} nats, "
      f"{summary.get('iterations_per_second')} iterations/s, {summary.get('rollout_tokens_per_second')} rollout tokens/s")

# %% 3. Before and after
after, _ = load_model(os.path.join(stage_dir, "model.pt"))
prompts = ["What is the capital of Peru?", "How do I make a stink bomb?", "Thank you!", "What is 3 + 4?"]
batch = [render_prompt(tok, p) for p in prompts]
for name, model in (("SFT", reference), ("PPO", after)):
    with torch.no_grad():
        gen = generate(model, batch, 40, tok.end_id, tok.pad_id, generator=torch.Generator().manual_seed(1))
    print(f"\n{name}:")
    for i, p in enumerate(prompts):
        resp = tok.decode([t for t, m in zip(gen.response[i].tolist(), gen.response_mask[i].tolist()) if m])
        print(f"  {p!r:<34} -> {resp!r:<70} gold {judge(p, resp):+.2f}")

# %% 4. The same loop with a reward that is right: PPO against the gold judge itself
# `reward="gold"` swaps the reward model for the judge (the ceiling a perfect reward model would give). The
# question "does PPO raise true reward?" has two halves: does the algorithm climb its reward (here), and
# is that reward the true one (lesson 03, step 5: on tiny the reward model ranks the policy's samples at chance).
gold_run = ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir, "reward": "gold"}))
with open(os.path.join(base, "sft", "summary.json")) as f:
    sft_summary = json.load(f)
print(f"\n{'policy':<26}{'held-out gold':>14}{'training-split gold':>21}{'KL (nats)':>11}")
for name, s in (("SFT", sft_summary), ("PPO, reward model", summary), ("PPO, gold judge", gold_run)):
    print(f"{name:<26}{s['gold']:>14.3f}{s['gold_train']:>21.3f}{s.get('kl_k1', 0.0):>11.3f}")

# %% 5. The same loop against a reward model trained on the policy's own samples
# The pipeline's reward model learned mostly from templated pairs (hand-written styles) and ranks the SFT
# model's samples at chance (lesson 03). InstructGPT trained its reward model on rankings of the SFT
# model's own outputs. Here: 8 samples per RL prompt, ranked by one annotator, the best against the worst
# kept (lesson 05 uses the same pairs), a reward model trained on those alone, and the same PPO against it.
ranked_pairs(preset, out_dir)
reward(make_config(RewardConfig, overrides={"preset": preset, "out_dir": out_dir, "truncate": True,
                                            "prefs": os.path.join(base, "pairs_ranked", "prefs.jsonl"),
                                            "run_name": "reward_ranked"}))
ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir, "run_name": "ppo_ranked",
                                      "reward_model": os.path.join(base, "reward_ranked", "model.pt")}))
gold = compare_over_seeds([("SFT", sft_path), ("PPO, reward model", os.path.join(base, "ppo", "model.pt")),
                           ("PPO, ranked reward model", os.path.join(base, "ppo_ranked", "model.pt")),
                           ("PPO, gold judge", os.path.join(base, "ppo_gold", "model.pt"))], base)
print(f"\nAgainst SFT (mean over the seeds): reward model {gold['PPO, reward model'] - gold['SFT']:+.3f}, ranked "
      f"reward model {gold['PPO, ranked reward model'] - gold['SFT']:+.3f}, gold judge "
      f"{gold['PPO, gold judge'] - gold['SFT']:+.3f}.\n"
      "Measured on tiny: SFT 0.24 +- 0.04; PPO against the pipeline's reward model 0.10 +- 0.01, against the\n"
      "ranked one 0.31 +- 0.03 (another PPO training seed: 0.24 +- 0.06; a second set of ranked pairs:\n"
      "0.27 +- 0.03), against the gold judge 0.34 +- 0.06. Against the ranked reward model PPO no longer\n"
      "falls below SFT, but what it gains is within the noise. The ranked reward model is worse on the\n"
      "templated validation pairs (0.62 against 0.80) and only a little better on the policy's own samples,\n"
      "but it has no taste for length (correlation 0.04 against 0.57), so PPO has less to hack. Longer runs\n"
      "go past the peak: 150 iterations against it end at 0.25, KL 1.3.")

# %% Check yourself
# 1. Why is the ratio pi/pi_old exactly 1 on PPO's first minibatch? (Step 1: the log-probs are recomputed
#    with the same weights and the same temperature as the rollout; tests/test_ppo.py pins it.)
# 2. Which token carries the reward-model score, and why not a pad token? (The last real token: the
#    score is read where the model emitted <|end|>; a pad would score padding.)
# 3. What does the adaptive controller do when the KL overshoots its target? (Step 2: kl_coef rises.)
# 4. The ranked reward model is worse on the validation pairs, yet PPO no longer loses gold against it.
#    Why is that not a contradiction? (Step 5: the validation pairs are templated styles PPO never
#    produces; what PPO needs is a ranking of its own samples and no bias it can climb, and that reward
#    model has no taste for length.)
