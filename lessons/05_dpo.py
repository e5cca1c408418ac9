"""Lesson 05 -- DPO: preference optimisation with no reward model and no sampling.

Run:      python lessons/05_dpo.py          (preset tiny: about 8 minutes on a 2-core CPU after lesson 03)
          python lessons/05_dpo.py micro    (under a minute; learns little)
Reads:    out/<preset>/sft/ (lesson 02), out/<preset>/pairs/prefs.jsonl (lesson 03: the pairs DPO trains on,
          the world's templated pairs plus a few hundred pairs of the SFT model's own samples),
          out/<preset>/world/prefs_eval.jsonl (held-out pairs); run here if missing
Writes:   out/<preset>/dpo/ (the pipeline's DPO run, beta 0.1, reused if it exists),
          out/<preset>/dpo_beta<beta>/ (the other betas of the sweep), out/<preset>/pairs_ranked/ and
          out/<preset>/dpo_ranked/ (step 5), plots/dpo_curves_<preset>.png, plots/dpo_beta_sweep_<preset>.png

PPO (lesson 04) fits a reward model, then samples from the policy and climbs that reward under a KL
penalty. DPO (Rafailov et al. 2023) notices that the KL-penalised objective has a closed-form optimum,
pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x) (eq. 4), so every policy defines the reward it is
optimal for:
    r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x)                       (eq. 5)
Put that into the Bradley-Terry likelihood of the labelled pairs (eq. 1) and Z(x) cancels, leaving a
plain classification loss on the policy's own log-probs:
    L = -log sigmoid( beta * [log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)] )       (eq. 7)
Here beta * log(pi / pi_ref) is the *implicit reward* (`rewards/chosen`, `rewards/rejected` in the
logs), computed on SUMMED response log-probs. No reward model, no generation, one model in memory
(the reference's log-probs are computed once, before training).

What you should see
  1. Before training the policy IS the reference: every implicit reward is exactly 0 and the loss is
     log 2 = 0.693 on every pair, whatever the label.
  2. During training: rewards/margins and rewards/accuracies rise; rewards/rejected falls fast. The
     chosen side CAN fall too, and that is not a bug: the loss only asks the *difference* to grow, so
     pushing both down, the rejected one faster, lowers it as well (the DPO gradient, Rafailov et al.
     2023 §4, weights "up on y_w, down on y_l" by how wrong the implicit reward is, and nothing anchors
     the level; the fall of the chosen likelihood is analysed in later work, e.g. Pal et al. 2024
     "Smaug" (DPO-Positive) and Razin et al. 2024 "Unintentional Unalignment"). On tiny it does not:
     rewards/chosen (beta times the chosen log-ratio to the reference, steadier than logps/chosen) is
     positive at every logged step and rises from +0.03 to +0.25, while rewards/rejected falls from
     -0.02 to -0.48. Step 5's run on ranked pairs is one where the chosen side falls: on the held-out
     pairs its val_rewards/chosen is -0.25 (out/tiny/dpo_ranked/summary.json).
  3. After training, the implicit rewards of a few held-out pairs, computed by hand from the two
     models' log-probs, equal what `losses.dpo_loss` reports.
  4. The beta sweep: small beta lets the policy move far from SFT (large KL), large beta keeps it
     close. Gold against KL shows how much true reward each nat of drift bought -- and whether a
     small beta over-fits the annotators' noise and bias (the same flattery/length taste the reward
     model inherited in lesson 03: DPO learns it from the same pairs, implicitly).
  5. The data decides: the same DPO on pairs of the SFT model's own samples (the best against the worst
     of an annotator's ranking of 8, no templated pairs) keeps or slightly raises held-out gold, where
     the default pairs lower it (tiny, three evaluation seeds: 0.28 and 0.14 against SFT's 0.24).

Deliberate simplifications: the library's default DPO settings (a fixed step budget, 10 steps on
micro); one seed per beta; KL is measured on the policy's own samples of every evaluation prompt
(the held-out ones and a fixed sample of training-split ones: `kl_k1`), gold on the held-out ones.
"""

# %% Setup
import json
import math
import os
import sys

import torch

from minirlhf.checkpoint import load_model
from minirlhf.config import DPOConfig, make_config
from minirlhf.data import read_preferences_with_report
from minirlhf.dpo import pad_pairs, sequence_logps
from minirlhf.dpo import run as dpo
from minirlhf.losses import dpo_loss
from minirlhf.plots import plt, read_metrics
from minirlhf.reward import encode_pairs
from minirlhf.sample import tokenizer_for
from prerequisites import compare_over_seeds, ensure, ranked_pairs

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
ensure(preset, out_dir, upto="pairs")  # world -> pretrain -> SFT -> pairs, each reused when it already ran
sft_path = os.path.join(base, "sft", "model.pt")
tok = tokenizer_for(sft_path)
reference, ref_ckpt = load_model(sft_path)
max_len = ref_ckpt["model_config"]["block_size"] + 1  # as dpo.run: the forward pass reads ids[:, :-1]
print(f"DPO trains on {os.path.join(base, 'pairs', 'prefs.jsonl')} (the world's templated pairs plus a few hundred "
      "pairs of the SFT\nmodel's own samples, all labelled by the simulated annotators) and validates on the world's "
      "held-out pairs.")

# A few held-out pairs, encoded exactly as the DPO stage encodes them (loss mask = the assistant's tokens).
eval_rows = read_preferences_with_report(os.path.join(base, "world", "prefs_eval.jsonl"))[0]
shown_rows, shown = [], []
for row in eval_rows:
    encoded, dropped = encode_pairs(tok, [row], max_len, True, "prefs_eval.jsonl")
    if not dropped:
        shown_rows.append(row)
        shown += encoded
    if len(shown) == 5:
        break
ids, mask = pad_pairs(shown, tok.pad_id, "cpu")  # (2b, T): the b chosen sequences, then the b rejected ones
b = len(shown)
with torch.no_grad():
    ref_logps, n_tokens = sequence_logps(reference, ids, mask)  # (2b,) summed log-probs, (2b,) token counts

# %% 1. Before training: policy == reference, so the implicit reward is 0 and the loss is log 2
beta = 0.1
loss0, m0 = dpo_loss(ref_logps[:b], ref_logps[b:], ref_logps[:b], ref_logps[b:], beta)
print(f"\nwith policy = reference: loss {loss0.item():.4f} (log 2 = {math.log(2):.4f}), implicit rewards "
      f"{m0['chosen_rewards'].tolist()} / {m0['rejected_rewards'].tolist()}")
print(f"\n{'prompt':<36}{'gold w':>8}{'gold l':>8}{'p(w>l)':>8}{'log pi_ref(y_w)':>17}{'log pi_ref(y_l)':>17}")
for i, row in enumerate(shown_rows):
    x = row["extra"]
    print(f"{row['prompt'][-1]['content'][:34]!r:<36}{x.get('gold_chosen', float('nan')):>8.2f}"
          f"{x.get('gold_rejected', float('nan')):>8.2f}{x.get('p_chosen') or float('nan'):>8.2f}"
          f"{ref_logps[i].item():>17.2f}{ref_logps[b + i].item():>17.2f}")
print("p(w>l) is the annotator's probability of the label it gave; gold w / gold l the judge's scores. Summed\n"
      "log-probs are lower for longer responses; the implicit reward is a log-RATIO against the reference, which\n"
      "takes that base level away -- but it is still a sum over tokens, so a longer response can gather more of it.")

# %% 2. Train DPO, beta = 0.1 (the pipeline's run: reused if the pipeline or this lesson already ran it)
common = {"preset": preset, "out_dir": out_dir, "truncate": True}  # exactly what `minirlhf pipeline` runs
main = dpo(make_config(DPOConfig, overrides=common))
rows = read_metrics(os.path.join(base, "dpo", "metrics.jsonl"))
print(f"\n{'step':>5}{'loss':>8}{'r_chosen':>10}{'r_rejected':>11}{'margin':>8}{'acc':>6}{'logp_w':>9}{'logp_l':>9}")
for r in rows:
    print(f"{r['step']:>5}{r['loss']:>8.4f}{r['rewards/chosen']:>10.3f}{r['rewards/rejected']:>11.3f}"
          f"{r['rewards/margins']:>8.3f}{r['rewards/accuracies']:>6.2f}{r['logps/chosen']:>9.2f}"
          f"{r['logps/rejected']:>9.2f}")
print("(training rows are means over the logged interval; validation numbers below are on the held-out pairs)")
print(f"validation: loss {main['val_loss']:.4f}, margin {main['val_rewards/margins']:+.3f}, "
      f"accuracy {main['val_rewards/accuracies']:.3f}; held-out gold {main['gold']:+.3f}, "
      f"KL to SFT {main['kl_k1']:.3f} nats")

steps = [r["step"] for r in rows]
val = [r for r in rows if "val_loss" in r]
vsteps = [r["step"] for r in val]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
ax = axes[0]
for key, colour in (("rewards/chosen", "tab:green"), ("rewards/rejected", "tab:red"), ("rewards/margins", "tab:blue")):
    ax.plot(steps, [r[key] for r in rows], ".-", color=colour, label=key)
    ax.plot(vsteps, [r[f"val_{key}"] for r in val], "o--", color=colour, alpha=0.6, label=f"val_{key}")
ax.axhline(0, color="grey", lw=0.5)
ax.set_title("implicit reward beta * log(pi / pi_ref)")
ax.legend(fontsize=7)
ax = axes[1]
ax.plot(steps, [r["rewards/accuracies"] for r in rows], ".-", label="train")
ax.plot(vsteps, [r["val_rewards/accuracies"] for r in val], "o--", label="validation (held-out pairs)")
ax.set_ylim(0, 1)
ax.set_title("rewards/accuracies (chosen above rejected)")
ax.legend(fontsize=8)
ax = axes[2]
ax.plot(steps, [r["logps/chosen"] for r in rows], ".-", color="tab:green", label="logps/chosen")
ax.plot(steps, [r["logps/rejected"] for r in rows], ".-", color="tab:red", label="logps/rejected")
ax.set_title("policy sequence log-probs (summed)")
ax.legend(fontsize=8)
for ax in axes:
    ax.set_xlabel("step")
fig.suptitle(f"DPO, beta {beta}, on the {preset} preset")
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/dpo_curves_{preset}.png", dpi=120)
print(f"plot saved to plots/dpo_curves_{preset}.png")
if len(rows) > 1:
    move_w = rows[-1]["rewards/chosen"] - rows[0]["rewards/chosen"]
    move_l = rows[-1]["rewards/rejected"] - rows[0]["rewards/rejected"]
    print(f"\nfrom the first to the last logged step rewards/chosen moved {move_w:+.3f} and rewards/rejected "
          f"{move_l:+.3f}.\n(The batches differ from row to row, so compare the trend, not single rows; rewards/* "
          "subtract the reference\non the same batch and are steadier than logps/*.)")
else:
    print(f"\nonly one logged step on {preset} (log_interval {make_config(DPOConfig, preset=preset).log_interval}): "
          f"the curves need a longer run (tiny: {make_config(DPOConfig, preset='tiny').max_steps} steps).")
if rows:
    w_last, l_last = rows[-1]["rewards/chosen"], rows[-1]["rewards/rejected"]
    print(f"At the last logged step the chosen responses are on average {'more' if w_last > 0 else 'less'} likely than "
          f"under the reference\n(rewards/chosen {w_last:+.3f}) and the rejected ones {'more' if l_last > 0 else 'less'} "
          f"likely (rewards/rejected {l_last:+.3f}). DPO only widens the gap;\nnothing anchors the level, so ", end="")
    if w_last < 0:
        print("a falling chosen side, as here, is expected, not a bug.")
    else:
        print("the chosen side could have fallen as well, and that would not have been a bug either.")

# %% 3. The implicit reward by hand, after training
policy, _ = load_model(os.path.join(base, "dpo", "model.pt"))
with torch.no_grad():
    pol_logps, _ = sequence_logps(policy, ids, mask)  # (2b,)
by_hand_w = beta * (pol_logps[:b] - ref_logps[:b])  # (b,) r(x, y_w), eq. 5 without the beta log Z(x) term
by_hand_l = beta * (pol_logps[b:] - ref_logps[b:])  # (b,) r(x, y_l)
_, m = dpo_loss(pol_logps[:b], pol_logps[b:], ref_logps[:b], ref_logps[b:], beta)
print(f"\n{'prompt':<36}{'r(y_w)':>9}{'r(y_l)':>9}{'margin':>9}{'P(w>l)':>8}{'gold w-l':>10}")
for i, row in enumerate(shown_rows):
    x = row["extra"]
    margin = (by_hand_w[i] - by_hand_l[i]).item()
    gold_gap = (x.get("gold_chosen") or 0.0) - (x.get("gold_rejected") or 0.0)
    print(f"{row['prompt'][-1]['content'][:34]!r:<36}{by_hand_w[i].item():>+9.3f}{by_hand_l[i].item():>+9.3f}"
          f"{margin:>+9.3f}{1 / (1 + math.exp(-margin)):>8.2f}{gold_gap:>+10.2f}")
agree = max((by_hand_w - m["chosen_rewards"]).abs().max().item(),
            (by_hand_l - m["rejected_rewards"]).abs().max().item())
print(f"max |by hand - dpo_loss metrics| = {agree:.2e}")
print("P(w>l) = sigmoid(margin) is the Bradley-Terry probability (eq. 6) that the trained policy, read as a reward\n"
      "model, assigns to the annotator's label. The beta log Z(x) term is the same for both responses of a prompt,\n"
      "so it cancels in the margin: the implicit reward ranks responses to one prompt, it is not a score to compare\n"
      "across prompts.")

# %% 4. The beta sweep: how far from SFT, and for how much gold
betas = (0.03, 0.1, 0.3, 1.0)
runs = {}
for bt in betas:
    if bt == 0.1:
        runs[bt] = main  # the pipeline's `dpo` folder: the same config as the stage's default
    else:
        runs[bt] = dpo(make_config(DPOConfig, overrides={**common, "beta": bt, "run_name": f"dpo_beta{bt:g}"}))
with open(os.path.join(base, "sft", "summary.json")) as f:
    sft_summary = json.load(f)
print(f"\n{'run':<12}{'gold':>8}{'KL (k1)':>9}{'val acc':>9}{'val margin':>12}{'length':>8}{'flattery':>10}")
print(f"{'SFT':<12}{sft_summary['gold']:>+8.3f}{0.0:>9.3f}{'-':>9}{'-':>12}{sft_summary['length']:>8.1f}"
      f"{sft_summary['flattery_rate']:>10.2f}")
for bt, s in runs.items():
    print(f"{f'beta {bt:g}':<12}{s['gold']:>+8.3f}{s['kl_k1']:>9.3f}{s['val_rewards/accuracies']:>9.3f}"
          f"{s['val_rewards/margins']:>+12.3f}{s['length']:>8.1f}{s['flattery_rate']:>10.2f}")
print("gold: the gold judge on held-out prompts (the same prompts and seed as the SFT row); KL: nats per response\n"
      "on the policy's own samples of all evaluation prompts. Margins are in units of beta, so compare accuracies, not margins, across betas.")

fig, ax = plt.subplots(figsize=(6, 4.2))
ax.plot(0.0, sft_summary["gold"], "k*", markersize=12, label="SFT (the reference, KL 0)")
pts = sorted(runs.items(), key=lambda kv: kv[1]["kl_k1"])
ax.plot([s["kl_k1"] for _, s in pts], [s["gold"] for _, s in pts], "o-", label="DPO")
for bt, s in runs.items():
    ax.annotate(f"beta {bt:g}", (s["kl_k1"], s["gold"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
ax.set_xlabel("KL to the SFT model (nats per response, all evaluation prompts)")
ax.set_ylabel("gold reward (held-out prompts)")
ax.set_title(f"DPO: gold vs KL across beta ({preset})")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"plots/dpo_beta_sweep_{preset}.png", dpi=120)
print(f"plot saved to plots/dpo_beta_sweep_{preset}.png")
small, large = runs[min(betas)], runs[max(betas)]
print(f"\nbeta {min(betas):g}: KL {small['kl_k1']:.3f}, gold {small['gold']:+.3f};  "
      f"beta {max(betas):g}: KL {large['kl_k1']:.3f}, gold {large['gold']:+.3f}.\nThe KL column should shrink as beta "
      "grows: beta is the KL coefficient of the objective DPO solves (eq. 3).")

# %% 5. The data decides: DPO on the SFT model's own samples, best against worst
# The pairs above are mostly templated (hand-written styles: ideal, verbose, rude, ...) with a few
# hundred on-policy pairs mixed in, each on-policy pair two samples an annotator compared once. Here the
# pairs come from the SFT model itself: 8 samples per RL prompt, every pair of them judged by the same
# annotators, ranked by wins, and only the two ends kept (`--pairing=best_worst`), with no templated
# pairs at all (`--mix_templated=false`). Same DPO, same beta, same steps; only the data changes.
ranked = ranked_pairs(preset, out_dir)
dpo(make_config(DPOConfig, overrides={**common, "run_name": "dpo_ranked",
                                      "prefs": os.path.join(base, "pairs_ranked", "prefs.jsonl")}))
with open(os.path.join(base, "pairs", "summary.json")) as f:
    default_pairs = json.load(f)
print(f"\n{'data':<34}{'on-policy':>10}{'templated':>10}{'on-policy labels right':>24}")
for name, ps in (("default pairs (lesson 03)", default_pairs), ("ranked, on-policy only", ranked)):
    right = ps["on_policy_agreement"]
    print(f"{name:<34}{ps['on_policy_pairs']:>10}{ps['templated_pairs']:>10}"
          f"{(f'{right:.2f}' if right is not None else '-'):>24}")
# One sampling seed moves a model's held-out gold by about 0.04, as much as the differences here.
gold = compare_over_seeds([("SFT", sft_path), ("DPO, default pairs", os.path.join(base, "dpo", "model.pt")),
                           ("DPO, ranked pairs", os.path.join(base, "dpo_ranked", "model.pt"))], base)
print(f"\nAgainst SFT: DPO on the default pairs {gold['DPO, default pairs'] - gold['SFT']:+.3f}, on the "
      f"ranked pairs {gold['DPO, ranked pairs'] - gold['SFT']:+.3f} (mean over the seeds).\n"
      "Same loss, same beta, same steps: only the data differs. Measured on tiny: 0.24 +- 0.04 (SFT), 0.14 +- 0.06\n"
      "(default pairs), 0.28 +- 0.05 (ranked; another training seed: 0.28): DPO loses gold when it learns the\n"
      "annotators' verdicts on the templated styles, and holds SFT's level, or a little above it, on pairs of\n"
      "what the model itself writes.")

# %% Check yourself
# 1. Why does DPO need no reward model? (Eq. 5: the policy's log-ratio to the reference IS a reward, up to
#    a prompt-only term that cancels inside Bradley-Terry; step 3 computes it from two forward passes.)
# 2. Why is the loss exactly log 2 at step 0, whatever the labels? (Step 1: pi = pi_ref makes every
#    implicit reward 0, so sigmoid(0) = 1/2 for every pair.)
# 3. If logps/chosen went down while the accuracy went up, would training be broken? (Step 2: no. The
#    loss sees only the difference of log-ratios; both can fall as long as the rejected one falls faster.
#    On tiny the chosen side happens to rise, but nothing in the loss makes it. If it matters,
#    DPO-Positive or an SFT term on the chosen responses (as in ORPO, lesson 07) anchors it.)
# 4. What does beta control, and what would you expect at beta -> 0? (Step 4: beta is the weight of the
#    KL term; small beta -> large KL, and the policy chases the annotators' labels, noise and bias
#    included, with nothing holding it near SFT.)
# 5. Why can the same loss, the same beta and the same number of steps give a lower or a higher gold
#    than SFT? (Step 5: DPO fits whatever the pairs say. Templated pairs teach the annotators' verdicts
#    on styles the model does not produce; pairs of its own samples move probability between answers it
#    actually gives, and the ends of a ranking of eight are labelled right more often than one compared pair.)
