"""Lesson 06 -- reward hacking: optimise a learned reward too hard and the true reward falls.

Run:      python lessons/06_reward_hacking.py          (preset tiny: about 15 minutes on a 2-core CPU)
          python lessons/06_reward_hacking.py micro    (a minute; learns little)
Reads:    out/<preset>/sft/, out/<preset>/reward/ (lessons 02-03; run here if missing)
Writes:   out/<preset>/ppo/ (the pipeline's PPO, reused), out/<preset>/ppo_hacking/, out/<preset>/ppo_ptx/,
          plots/reward_hacking_<preset>.png

What you should see
  1. PPO with a tiny, fixed KL coefficient, run long: the reward model's score (the proxy) keeps
     climbing, while the gold judge's score peaks and falls -- the policy has found what the reward
     model likes that the gold judge does not: the annotators' taste for length (and flattery), which
     the reward model learned (lesson 03), plus its plain errors away from its training data. On the
     tiny preset (measured: proxy -0.40 -> +6.79, gold +0.23 -> -1.00 over 240 iterations, KL 123
     nats) the gold peak is the SFT model itself: this reward model is already a poor guide at KL 0,
     and the policy ends in a loop of "... are welcome! I am glad I could help with that ..." that
     never stops.
  2. Gold and proxy against d = sqrt(KL to the SFT model), with Gao et al.'s fit for RL,
     R(d) = d (alpha - beta log d) (Gao, Schulman and Hilton 2022, "Scaling Laws for Reward Model
     Overoptimization", eq. 2; R is the gain over the starting policy). With beta > 0 the fit peaks at
     d* = exp(alpha / beta - 1), whatever the sign of alpha, and gains R(d*) = beta d* there (with
     beta <= 0 it has no peak). Alpha < 0 puts that peak below d = 1/e (KL 0.14). On tiny, where the
     gold curve only falls, the fit gives alpha = -0.061, beta = +0.022: d* = 0.02 (KL 0.0005) for a
     gain of 0.0005, i.e. at the SFT model itself -- the fit says "do not optimise this reward model
     at all".
  3. Samples from early and late in the run: longer, rambling answers, then loops, late.
  4. The defence against hacking: the pipeline's adaptive KL controller (a healthy KL coefficient) keeps
     the KL near its target, so the damage stays small. And a remedy for a different cost: PPO-ptx
     (InstructGPT eq. 2) adds the pretraining loss and keeps the held-out perplexity -- our proxy for the
     alignment tax, which InstructGPT measures as regressions on public NLP benchmarks -- lower at a
     similar gold reward; it does not stop the hacking.

Deliberate simplifications: one seed per run (the curves are noisy); the fit uses the evaluation points
of one run.
"""

# %% Setup
import json
import math
import os
import sys

import numpy as np

from minirlhf.checkpoint import load_model, load_scalar_model
from minirlhf.config import PPOConfig, make_config
from minirlhf.evaluate import evaluate_policy
from minirlhf.plots import plt, read_metrics
from minirlhf.ppo import run as ppo
from minirlhf.sample import tokenizer_for
from prerequisites import ensure

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
ensure(preset, out_dir, upto="reward")
long_run = {"micro": 12}.get(preset, 240)  # iterations of the over-optimised run

# %% 0. The starting point: the SFT policy (KL 0)
sft_path = os.path.join(base, "sft", "model.pt")
tok = tokenizer_for(sft_path)
sft_model, _ = load_model(sft_path)
reward_model, _ = load_scalar_model(os.path.join(base, "reward", "model.pt"))
start, _ = evaluate_policy(sft_model, tok, os.path.join(base, "world"), reward_model=reward_model,
                           pretrain_dir=os.path.join(base, "pretrain"), seed=1337)
print(f"SFT: gold {start['gold']:+.3f}, proxy {start['proxy']:+.3f}, held-out perplexity {start['heldout_ppl']:.2f}")

# %% 1. Over-optimisation: a tiny fixed KL coefficient, many iterations
hack = ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir, "run_name": "ppo_hacking",
                                             "kl_coef": 0.002, "adaptive_kl": False, "iterations": long_run,
                                             "eval_interval": max(1, long_run // 16)}))
rows = [r for r in read_metrics(os.path.join(base, "ppo_hacking", "metrics.jsonl")) if "eval/gold" in r]
kl = np.array([0.0] + [max(r["eval/kl_k1"], 0.0) for r in rows])
gold = np.array([start["gold"]] + [r["eval/gold"] for r in rows])
proxy = np.array([start["proxy"]] + [r["eval/proxy"] for r in rows])
length = [start["length"]] + [r["eval/length"] for r in rows]
flattery = [start["flattery_rate"]] + [r["eval/flattery_rate"] for r in rows]
print(f"\n{'iteration':>9}{'KL':>8}{'sqrt KL':>9}{'proxy':>8}{'gold':>8}{'length':>8}{'flattery':>9}")
for i, it in enumerate([0] + [r["iteration"] for r in rows]):
    print(f"{it:>9}{kl[i]:>8.2f}{math.sqrt(kl[i]):>9.2f}{proxy[i]:>8.3f}{gold[i]:>8.3f}{length[i]:>8.1f}{flattery[i]:>9.2f}")
peak = int(np.argmax(gold))
print(f"\ngold peaks at evaluation {peak} (KL {kl[peak]:.2f}) at {gold[peak]:+.3f}; at the end it is {gold[-1]:+.3f} "
      f"({gold[-1] - gold[peak]:+.3f} from the peak) while the proxy went {proxy[peak]:+.3f} -> {proxy[-1]:+.3f}")

# %% 2. Gao et al.'s functional form, fitted by least squares: R(d) = alpha d - beta d log d
d = np.sqrt(kl)
gain = gold - gold[0]
features = np.stack([d, -d * np.log(np.maximum(d, 1e-9))], axis=1)  # (points, 2); the d = 0 point is exact
(alpha, beta), *_ = np.linalg.lstsq(features[1:], gain[1:], rcond=None)
print(f"fit: R(d) = d ({alpha:.3f} {-beta:+.3f} log d)", end="")
if beta > 0:
    d_star = math.exp(alpha / beta - 1)  # R'(d) = alpha - beta (log d + 1) = 0
    print(f", peak at d* = exp(alpha / beta - 1) = {d_star:.2f} (KL {d_star ** 2:.4f}), gain R(d*) = beta d* = "
          f"{beta * d_star:+.4f}")
    if alpha < 0:
        print("alpha < 0 puts the peak below d = 1/e (KL 0.14), and past d* every further step away "
              "from SFT loses gold")
else:
    print(": beta <= 0, so no peak (the fitted gain has no maximum at d > 0)")

# %% 3. Samples before and after the peak
samples = [json.loads(line) for line in open(os.path.join(base, "ppo_hacking", "eval_samples.jsonl"))]
peak_iteration = 0 if peak == 0 else rows[peak - 1]["iteration"]
before = [s for s in samples if s["iteration"] == (peak_iteration or samples[0]["iteration"])][:4]
after = [s for s in samples if s["iteration"] == samples[-1]["iteration"]][:4]
for title, chosen in ((f"at the first evaluation at or after the gold peak (iteration {before[0]['iteration']})", before),
                      (f"at the end (iteration {after[0]['iteration']})", after)):
    print(f"\n{title}:")
    for s in chosen:
        print(f"  {s['prompt'][:40]!r:<44} -> {s['response'][:90]!r}  gold {s['gold']:+.2f} proxy {s['proxy']:+.2f}")

# %% 4. The defences: a healthy (adaptive) KL coefficient, and PPO-ptx
healthy = ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir}))  # the pipeline's run
ptx = ppo(make_config(PPOConfig, overrides={"preset": preset, "out_dir": out_dir, "run_name": "ppo_ptx",
                                            "ptx_coef": 1.0}))
print(f"\n{'run':<22}{'KL':>8}{'proxy':>8}{'gold':>8}{'held-out ppl':>14}")
print(f"{'SFT':<22}{0.0:>8.2f}{start['proxy']:>8.3f}{start['gold']:>8.3f}{start['heldout_ppl']:>14.2f}")
for name, s in (("PPO, tiny KL coef", hack), ("PPO, adaptive KL", healthy), ("PPO-ptx, adaptive KL", ptx)):
    print(f"{name:<22}{s['kl_k1']:>8.2f}{s['proxy']:>8.3f}{s['gold']:>8.3f}{s['heldout_ppl']:>14.2f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
ax = axes[0]
ax.plot(d, proxy - proxy[0], "o-", color="tab:blue", label="proxy (reward model) gain")
ax.plot(d, gain, "o-", color="tab:red", label="gold gain")
grid = np.linspace(1e-3, d.max() * 1.05, 200)
ax.plot(grid, grid * (alpha - beta * np.log(grid)), "--", color="tab:red", alpha=0.6,
        label=f"fit d({alpha:.2f} {-beta:+.2f} log d)")
for name, s, marker in (("adaptive KL", healthy, "s"), ("PPO-ptx", ptx, "^")):
    ax.plot(math.sqrt(max(s["kl_k1"], 0)), s["gold"] - gold[0], marker, color="k", label=f"{name} (gold)")
ax.axhline(0, color="grey", lw=0.5)
ax.set_xlabel("d = sqrt(KL to the SFT model)")
ax.set_ylabel("reward gain over SFT")
ax.set_title("Over-optimising a learned reward")
ax.legend(fontsize=8)
ax = axes[1]
ax.plot(d, length, "o-", label="mean response length (tokens)")
ax2 = ax.twinx()
ax2.plot(d, flattery, "s-", color="tab:orange", label="flattery rate")
ax.set_xlabel("d = sqrt(KL to the SFT model)")
ax.set_ylabel("tokens")
ax2.set_ylabel("flattery rate", color="tab:orange")
ax.set_title("What the policy learned to do")
fig.suptitle(f"Reward hacking on the {preset} preset (PPO, kl_coef 0.002 fixed, {long_run} iterations)")
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/reward_hacking_{preset}.png", dpi=120)
print(f"\nplot saved to plots/reward_hacking_{preset}.png")

# %% Check yourself
# 1. Why does the proxy keep rising after the gold peak? (The policy moves to responses the reward model
#    over-rates: the annotators' length and flattery bias, learned in lesson 03, plus its plain errors
#    off the data it was trained on.)
# 2. Where on the d axis would you stop? (Near the fitted peak d*; the adaptive controller's target KL
#    plays that role in practice.)
# 3. What does PPO-ptx buy, and what does it cost? (Step 4: a lower held-out perplexity -- on tiny even
#    below SFT's, 1.68 against 1.71 -- at about the same gold; the cost is extra compute per step, and in
#    general some reward where the pretraining text pulls against it.)
