"""Lesson 08 -- the reward-vs-KL frontier: how much true reward each method buys per nat of drift from SFT.

Run:      python lessons/08_reward_vs_kl.py          (preset tiny: 23 minutes on a 2-core CPU for all 22 points:
                                                     5 for best-of-n, 4 for each other method, and SFT; each
                                                     trained run reused once it exists)
          python lessons/08_reward_vs_kl.py micro    (quick mode, 2 points per method and 3 for best-of-n: under a
                                                     minute)
          python lessons/08_reward_vs_kl.py tiny quick   (the quick sweep on any preset)
Reads:    out/<preset>/sft/, out/<preset>/reward/, out/<preset>/pairs/ (lessons 02-03; run here if missing)
Writes:   out/<preset>/frontier_<method>_<knob>/ (one folder per trained point, reused when it already ran),
          out/<preset>/best_of_n/, out/<preset>/frontier/frontier.json, plots/frontier_<preset>.png

Every fine-tuning method trades distance from the SFT model for reward. Distance is measured here as
the KL divergence KL(pi || pi_sft) in nats per response, on the policy's own samples of the held-out
prompts; reward as the gold judge's mean score on the same prompts. Each method has a knob that sets
how far it may go:
  PPO        a FIXED kl_coef in the shaped reward r - kl_coef * KL (Ziegler et al. 2019, eq. 2;
             InstructGPT, Ouyang et al. 2022, eq. 2): a smaller coefficient lets it go further;
  DPO        beta, the same KL coefficient in the objective DPO solves in closed form (Rafailov et al.
             2023, eq. 3); DPO's Figure 2 (left) draws exactly this plane for PPO and DPO;
  GRPO       beta, the weight of the k3 KL term in its loss (Shao et al. 2024, eq. 3);
  best-of-n  n samples from SFT, keep the reward model's favourite: no training at all, and an analytic
             KL <= log n - (n - 1)/n (Stiennon et al. 2020; Gao et al. 2022; an upper bound, Beirami et al.
             2024, reached when repeated samples are negligible) -- a strong training-free
             reference: at equal KL it is usually *more* reward-efficient than RL (Gao et al. 2022, §3),
             and RL's case is inference cost (one sample per query instead of n);
  SFT at T   the SFT model itself sampled at a temperature T < 1: no training and no reward model, only
             a sharper distribution, with KL(pi_T || pi_sft) measured like everyone else's. A second
             baseline: how much gold is there for the taking by entropy reduction alone?
A method's points, joined from the SFT origin, trace its frontier; a method DOMINATES at a given KL
when it reaches more gold than the others without exceeding that KL. The right panel puts the proxy
(reward-model score) against gold: a learned reward is a good guide while the two rise together, and
over-optimised once proxy keeps rising while gold stalls or falls (Gao et al. 2022; lesson 06).

What you should see
  1. The points table: for every method, KL grows as its knob loosens (smaller kl_coef, smaller beta,
     larger n). The textbook picture has gold first rising with it, then falling once the proxy is
     over-optimised. On tiny (measured) gold does not rise: no trained point beats the SFT model's 0.23, and gold
     falls with KL -- best-of-n from 0.23 (n = 1) to -0.01 at KL 1.8 (n = 16), PPO from 0.19 at KL 0.5
     (kl_coef 0.3) to 0.05 at KL 4.5, DPO from 0.22 at KL 0.03 (beta 1) to -0.26 at KL 6.9 (beta 0.03),
     GRPO from 0.14 at KL 0.6 (beta 0.5) to 0.02-0.09 beyond KL 2.2. The reason is measured in lesson 03,
     step 5: the reward model ranks the policy's own samples of these prompts at chance, so optimising it
     (or the annotators' labels behind it, for DPO) buys drift and its biases, not gold.
     Yet gold WAS there to be had near SFT: the SFT model merely sampled at a lower temperature rises
     steadily -- 0.27 at T = 0.9 (KL 0.05), 0.29 at 0.8 (KL 0.08), 0.32 at 0.7 (KL 0.16), 0.36 at 0.5
     (KL 0.44) -- because the answer it gives most often is usually the right one. (Its proxy score
     falls meanwhile: one more sign that the reward model does not point at gold here.)
  2. The dominance lines: at each KL, which method has the most gold at or below it. On tiny the
     tempered SFT model leads at every KL it reaches; of the trained methods DPO with a large beta loses
     least (0.22 at KL 0.03-0.06, the SFT level within the noise), and every trained method loses more
     the further it goes. Check the reward model's on-policy accuracy, and this no-training baseline,
     before crediting any method with a gain.
  3. plots/frontier_<preset>.png: gold vs KL (left) and proxy vs gold (right). Points that sit high
     on the proxy axis but low on gold are reward hacking.

Deliberate simplifications: one seed per point and each stage's default budget (no per-point tuning),
so small differences between methods are within the noise; KL is a sample estimate except for best-of-n,
where the analytic value is an upper bound (see minirlhf/best_of_n.py).
"""

# %% Setup
import math
import sys

from minirlhf.config import FrontierConfig, make_config
from minirlhf.frontier import LABELS, dominance
from minirlhf.frontier import run as frontier
from prerequisites import ensure

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
mode = sys.argv[2] if len(sys.argv) > 2 else ("quick" if preset == "micro" else "full")
out_dir = "out"
ensure(preset, out_dir, upto="reward")  # SFT (origin and reference), the pairs (DPO), the reward model (PPO, GRPO, bon)

# %% 1. Run (or reuse) every point: the library's `minirlhf frontier`
overrides = {"preset": preset, "out_dir": out_dir}
if mode == "quick":  # two points per trained method, three for best-of-n
    overrides.update({"ppo_kl_coefs": "0.1,0.3", "dpo_betas": "0.1,1", "grpo_betas": "0,0.5", "bon_ns": "1,2,4",
                      "temperatures": "0.8,0.5"})
cfg = make_config(FrontierConfig, overrides=overrides)
print(f"sweeps ({mode}): PPO kl_coef {cfg.ppo_kl_coefs}; DPO beta {cfg.dpo_betas}; GRPO beta {cfg.grpo_betas}; "
      f"best-of-n n {cfg.bon_ns}; SFT at temperature {cfg.temperatures}")
result = frontier(cfg)
points = result["points"]

# %% 2. The points table
sft = next(p for p in points if p["method"] == "sft")
print(f"\n{'method':<22}{'knob':>7}{'KL':>8}{'gold':>8}{'gain':>8}{'gain/KL':>9}{'proxy':>8}{'length':>8}")
for p in sorted(points, key=lambda p: ("sft", "bon", "temp", "ppo", "dpo", "grpo").index(p["method"]) * 1e6 + p["kl"]):
    gain = p["gold"] - sft["gold"]
    per_nat = f"{gain / p['kl']:+.3f}" if p["kl"] > 1e-6 else "-"
    length = f"{p['length']:.1f}" if p.get("length") is not None else "-"
    print(f"{LABELS.get(p['method'], 'SFT'):<22}{p['knob']:>7g}{p['kl']:>8.3f}{p['gold']:>+8.3f}{gain:>+8.3f}"
          f"{per_nat:>9}{p['proxy']:>+8.3f}{length:>8}")
print("KL: nats per response to the SFT model (best-of-n: the analytic upper bound log n - (n-1)/n); gain: gold minus SFT's gold;\n"
      "gain/KL: gold bought per nat of drift; proxy: the reward model's score (what PPO, GRPO and best-of-n optimise).")

# %% 3. Which method dominates at which KL
print("\nat each KL, the best gold reached without exceeding it:")
for line in dominance(points):
    print("  " + line)
one = next((p for p in points if p["method"] == "bon" and p["knob"] == 1), None)
if one is not None:  # best-of-1 is plain sampling from SFT: the same policy as the SFT row
    print(f"\nbest-of-n at n = 1 IS the SFT policy, sampled again: its gold {one['gold']:+.3f} vs the SFT row's "
          f"{sft['gold']:+.3f}.\nThat gap ({abs(one['gold'] - sft['gold']):.3f}) is the noise of one evaluation "
          "(the same held-out prompts, other samples):\nsmaller differences between points are not evidence.")
best = max(points, key=lambda p: p["gold"])
print(f"\nhighest gold overall: {best['gold']:+.3f} by {best['method']} ({best['knob']:g}) at KL {best['kl']:.3f} "
      f"(sqrt KL {math.sqrt(max(best['kl'], 0)):.2f})")

# %% 4. Proxy vs gold, per method: does the reward model still point the right way?
print(f"\n{'method':<22}{'proxy, lowest -> highest KL':>28}{'gold, lowest -> highest KL':>28}")
for method in ("bon", "temp", "ppo", "grpo", "dpo"):
    pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl"])
    if len(pts) < 2:
        continue
    lo, hi = pts[0], pts[-1]
    proxy = f"{lo['proxy']:+.3f} -> {hi['proxy']:+.3f}"
    gold = f"{lo['gold']:+.3f} -> {hi['gold']:+.3f}"
    hacked = hi["proxy"] > lo["proxy"] and hi["gold"] < lo["gold"]
    verdict = "  <- proxy up, gold down: over-optimised" if hacked else ""
    print(f"{LABELS[method]:<22}{proxy:>28}{gold:>28}{verdict}")
print("DPO and the tempered SFT model never optimise the proxy: their proxy column is only the reward model's "
      "opinion\nof their samples.")
print(f"\nplot: plots/frontier_{preset}.png (left: gold vs KL per method from the SFT star; right: proxy vs gold)")
print(f"table: {out_dir}/{preset}/frontier/frontier.json; {len(points)} points in {result['seconds']:.0f} s")

# %% Check yourself
# 1. Why compare methods at equal KL rather than at equal training steps? (KL measures how far the policy
#    moved from the model we trust, and the objective PPO and DPO both solve is "reward minus beta * KL".
#    It is a shared x-axis, not a perfect yardstick: Gao et al. 2022 find methods spend KL differently, e.g.
#    best-of-n reaches a given reward at less KL than RL.)
# 2. Best-of-n trains nothing. Why is it still worth plotting? (Step 2: it buys reward at a known, small
#    KL, usually more efficiently than RL at equal KL; what RL buys instead is one sample per query at
#    inference, where best-of-n pays for n samples and a reward-model pass on each.)
# 3. In the right panel, what does a point far right (high proxy) but low (low gold) mean? (Reward
#    hacking: the policy found what the reward model over-rates -- lesson 06, step 4 of this lesson.)
# 4. DPO never sees the reward model. Why can it still be placed on this plot and compared? (Its KL and
#    gold are measured by the same harness as everyone else's; only the proxy column is the RM's opinion
#    of its samples. Rafailov et al. 2023, Figure 2, draws the same comparison.)
# 5. Which knob value would you ship for each method? (The point just before its gold stops rising with
#    KL, read off the table in step 2.)
# 6. The tempered SFT model trains nothing and never sees a reward model. What does it mean when it beats
#    every trained method at every KL? (Step 2: that the gold on offer near SFT is mostly "say the most likely
#    answer more often"; a reward model that ranks the policy's samples at chance cannot point there, and
#    the trained methods spend their KL on its biases instead. Check this baseline before crediting a method.)
