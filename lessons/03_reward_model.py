"""Lesson 03 -- the reward model: a learned, noisy, biased stand-in for human judgement.

Run:      python lessons/03_reward_model.py         (preset tiny: about 5 minutes on a 2-core CPU after lesson 02)
          python lessons/03_reward_model.py micro   (seconds)
Reads:    out/<preset>/sft/ (lesson 02), out/<preset>/world/ (the stages up to SFT are run first if missing)
Writes:   out/<preset>/pairs/, out/<preset>/reward/, out/<preset>/reward_odin/,
          plots/rm_scores_by_style_<preset>.png, plots/rm_bias_<preset>.png, plots/rm_odin_<preset>.png

What you should see
  1. On-policy pairs: the SFT model's own samples, labelled by the simulated annotators -- who agree
     with the gold ordering on only about 60 % of these pairs (75 % on the world's templated pairs,
     lesson 00): label noise, as with real labellers.
  2. The reward model's validation accuracy against the annotators' labels is close to their own agreement
     with gold (no model can match single labels more often than the mean of max(p, 1 - p), 0.77 on tiny),
     and against the *gold* ordering it is higher: training on many noisy labels averages noise out.
     How much higher it could be is computable: a perfect model of the annotators (their preference
     probability for every pair, the likelier answer picked) orders a pair the gold way whenever they
     favour the better answer at all. On tiny that ceiling is 0.91; the trained one reaches 0.80 (the
     annotators themselves 0.72). Is the rest label noise? Train on the annotators' preference
     probability instead of one sampled label per pair -- what many votes per pair would give --
     with `minirlhf reward --soft_labels --run_name=reward_soft`: over training seeds 1337, 2 and 3 that
     reaches 0.840-0.848 against 0.796-0.824 with the labels on the 500 validation pairs. Those 500 are
     a coarse ruler (the interval printed below): on 4,000 fresh held-out pairs drawn from the world
     (`minirlhf.world.build.preference_rows`, 2,000 per split with a new seed; scored with
     `score_responses`) the same six models score 0.822-0.829 against 0.801-0.803, the ceiling there
     being 0.90. Noise costs about 2.5 points, as much as four times as many single-label pairs buy
     (16,000: 0.822). Both together -- 16,000 pairs with soft labels -- score 0.827 / 0.840 / 0.850 on
     the fresh pairs after 300 / 600 / 1,200 steps: 0.85 takes four times the comparisons and the
     compute. The rest of the gap is what a 1M-parameter trunk can read from the text (and on the SFT
     model's own samples, step 5, the soft-label model is no better: 0.44-0.49 on held-out prompts; PPO
     against it ends at 0.10 +- 0.01 held-out gold over three evaluation seeds, at KL 1.1, below SFT's
     0.24 as PPO against the default one does). The 0.91 is a generous bound: it counts near-ties as won, and
     ideal-vs-verbose pairs are near-ties for the annotators (median probability 0.53 for the better
     answer), so a small error in how a reward model weighs length loses that whole style pairing: six
     trained reward models (three seeds, labels and soft labels) order 0.09-0.27 of those pairs the
     gold way, where the bound counts 0.73.
  3. Scores per response style line up with the gold judge's ranking only in part. Wrong, rude,
     off-topic and unsafe compliance score low, as they should, but the order differs: on tiny the
     ideal answers average 0.00, below flattering (1.05) and verbose (0.75) ones and level with
     truncated ones (0.02), and a refusal of a harmless request (-2.03) scores below compliance with
     an unsafe one (-1.32), the reverse of gold. The top of that ranking is no accident:
  4. the bias: the annotators like longer and flattering answers, so the reward model does too. It
     scores "Great question! <ideal answer>" above the plain ideal answer for most prompts, while the
     gold judge always prefers the plain one. This is the gap PPO will exploit (lesson 06).
  5. On the SFT model's own samples -- the pairs PPO and best-of-n actually ask it to rank -- the reward
     model is far weaker than on the templated validation pairs: on tiny it is at chance (0.45 on
     training prompts, 0.48 on held-out ones) where one annotator label would still be right 61 % and
     71 % of the time. Many of those pairs are two wordings of a right answer, where the gold judge
     prefers the shorter and the annotators the longer (so the labels' own ceiling on training prompts
     is only 0.38). But even on the decisive pairs -- a right against a wrong answer, gold scores at
     least 0.5 apart -- it is at 0.56 (204 pairs) and 0.49 (367 pairs): it has learned styles, not
     facts. A good validation accuracy does not make a reward model worth optimising.
  6. ODIN takes the length bias out: the same reward model trained with a second head that soaks up
     length, dropped afterwards. On tiny an added filler sentence wins on 20 % of prompts instead of 94 %,
     and the correlation of its scores with length on SFT samples falls from 0.57 to 0.02, at the same
     validation gold accuracy (0.80). On the SFT model's own samples of training-split prompts it rises
     from 0.45 to 0.69, because it no longer prefers the longer of two wordings of one answer; on
     held-out prompts it stays near chance (0.55 on 574 pairs here, 0.50 on 11,285 pairs of 16 samples
     in `minirlhf best-of-n --reward_model=out/tiny/reward_odin/model.pt`, whose gold still falls with
     n): taking a bias out does not teach it the facts. Flattery stays: only length was separated out.

Deliberate simplifications: the library's default reward-model settings; one score per response.
"""

# %% Setup
import json
import os
import sys
from collections import defaultdict

from minirlhf.checkpoint import load_scalar_model
from minirlhf.config import PairsConfig, RewardConfig, make_config
from minirlhf.pairs import run as make_pairs
from minirlhf.plots import plt
from minirlhf.reward import DECISIVE_GAP
from minirlhf.reward import run as train_reward
from minirlhf.reward import score_responses
from minirlhf.sample import tokenizer_for
from minirlhf.world import agreement_stats
from prerequisites import ensure

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
ensure(preset, out_dir, upto="sft")  # world -> pretrain -> SFT, each reused when lessons 00-02 (or the pipeline) ran

# %% 1. On-policy pairs, labelled by noisy annotators
pairs = make_pairs(make_config(PairsConfig, overrides={"preset": preset, "out_dir": out_dir}))
print(f"\n{pairs['on_policy_pairs']} on-policy pairs; annotators agree with gold on "
      f"{pairs['on_policy_agreement']} of them")

# %% 2. Train the reward model
rm = train_reward(make_config(RewardConfig, overrides={"preset": preset, "out_dir": out_dir, "truncate": True}))
print(f"\nvalidation accuracy vs annotator labels: {rm['val_accuracy']:.3f}")
acc = rm.get("val_gold_accuracy", float("nan"))
half_width = 1.96 * (acc * (1 - acc) / rm["val_pairs"]) ** 0.5  # normal approximation to a binomial proportion
print(f"validation accuracy vs gold ordering:    {acc:.3f}  (+- {half_width:.3f}: the 95 % interval of a share "
      f"of ~{rm['val_pairs']} pairs;\n    a smaller difference between two reward models is noise)")
with open(os.path.join(base, "world", "prefs_eval.jsonl"), encoding="utf-8") as f:
    label_stats = agreement_stats([json.loads(line) for line in f])  # the validation pairs
print(f"annotators' own agreement with gold:     {rm.get('annotator_gold_agreement', float('nan')):.3f}  (the yardstick "
      "for agreeing with their labels)")
print(f"the best agreement with their labels:    {label_stats['label_accuracy_ceiling']:.3f}  (mean of max(p, 1 - p): "
      "a model can\n    exceed their agreement with gold here, because their bias is as predictable as the truth)")
print(f"gold accuracy reachable from the labels: {rm.get('label_ceiling_gold_accuracy', float('nan')):.3f}  (a perfect "
      "model of the annotators' preferences\n    picks the likelier answer of every pair, so their noise costs nothing "
      "and only their bias does)")

# %% 3. Scores per response style vs the gold judge
model, _ = load_scalar_model(os.path.join(base, "reward", "model.pt"))
tok = tokenizer_for(os.path.join(base, "reward", "model.pt"))
rows = [json.loads(line) for line in open(os.path.join(base, "world", "prefs_eval.jsonl"))]
by_style: dict[str, dict[str, list]] = defaultdict(lambda: {"prompt": [], "text": [], "gold": []})
for r in rows:
    for side in ("chosen", "rejected"):
        d = by_style[r[f"style_{side}"]]
        d["prompt"].append(r["prompt"])
        d["text"].append(r[side])
        d["gold"].append(r[f"gold_{side}"])
styles = sorted(by_style, key=lambda s: -sum(by_style[s]["gold"]) / len(by_style[s]["gold"]))
rm_scores = {s: score_responses(model, tok, by_style[s]["prompt"], by_style[s]["text"]) for s in styles}
print(f"\n{'style':<12}{'gold':>8}{'RM':>8}{'n':>6}")
for s in styles:
    g = by_style[s]["gold"]
    print(f"{s:<12}{sum(g) / len(g):>8.3f}{sum(rm_scores[s]) / len(g):>8.3f}{len(g):>6}")
fig, ax = plt.subplots(figsize=(8, 4))
ax.boxplot([rm_scores[s] for s in styles], showfliers=False)
ax.set_xticks(range(1, len(styles) + 1), styles, rotation=30)
ax2 = ax.twinx()
ax2.plot(range(1, len(styles) + 1), [sum(by_style[s]["gold"]) / len(by_style[s]["gold"]) for s in styles], "ro-",
         label="mean gold score")
ax.set_ylabel("reward model score (normalised)")
ax2.set_ylabel("gold score", color="r")
ax.set_title(f"Reward model scores by response style ({preset})")
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/rm_scores_by_style_{preset}.png", dpi=120)

# %% 4. The inherited bias: flattery and length
for what in ("flattery", "length"):
    print(f"\nadding {what}: the RM prefers the {what} version for {rm[f'rm_prefers_{what}']:.0%} of prompts "
          f"(mean score change {rm[f'rm_{what}_delta']:+.3f}); the gold judge for {rm[f'gold_prefers_{what}']:.0%} "
          f"(mean change {rm[f'gold_{what}_delta']:+.3f})")
fig, ax = plt.subplots(figsize=(6, 4))
x = [0, 1]
ax.bar([i - 0.2 for i in x], [rm["rm_prefers_flattery"], rm["rm_prefers_length"]], width=0.4, label="reward model")
ax.bar([i + 0.2 for i in x], [rm["gold_prefers_flattery"], rm["gold_prefers_length"]], width=0.4, label="gold judge")
ax.set_xticks(x, ["+ flattering opener", "+ filler sentence"])
ax.set_ylabel("share of prompts where the variant wins")
ax.set_ylim(0, 1)
ax.set_title(f"What the reward model inherited from the annotators ({preset})")
ax.legend()
fig.tight_layout()
fig.savefig(f"plots/rm_bias_{preset}.png", dpi=120)
print(f"\nplots saved to plots/rm_scores_by_style_{preset}.png and plots/rm_bias_{preset}.png")

# %% 5. The question RL asks: which of the policy's OWN samples is better?
# The validation pairs above are mostly templated styles that differ a lot (ideal vs rude, vs wrong). PPO and
# best-of-n ask something harder: rank k samples of one prompt from the SFT model, which differ in a fact or a
# few words. The reward stage measured that too (4 samples per prompt, every pair whose gold scores differ).
if "on_policy_gold_accuracy_heldout" in rm and "on_policy_decisive_pairs_heldout" not in rm:
    print("\nthis reward model's summary predates the label-ceiling and decisive-pair columns: run "
          f"`minirlhf reward --preset {preset} --force --truncate=true` (same weights) to add them")
elif "on_policy_gold_accuracy_heldout" in rm:
    print(f"\n{'prompts':<24}{'pairs':>7}{'RM vs gold':>12}{'one label':>11}{'label ceiling':>15}"
          f"{'decisive pairs':>16}{'RM on them':>12}")
    for split, label in (("train", "training split"), ("heldout", "held-out (new entities)")):
        print(f"{label:<24}{rm[f'on_policy_pairs_{split}']:>7}{rm[f'on_policy_gold_accuracy_{split}']:>12.3f}"
              f"{rm[f'on_policy_annotator_agreement_{split}']:>11.3f}{rm[f'on_policy_label_ceiling_{split}']:>15.3f}"
              f"{rm[f'on_policy_decisive_pairs_{split}']:>16}{rm[f'on_policy_decisive_accuracy_{split}']:>12.3f}")
    print("0.5 is chance. 'one label': how often a fresh annotator label agrees with gold; 'label ceiling': what a "
          "perfect model\nof the annotators' preferences would reach; 'decisive pairs': gold scores at least "
          f"{DECISIVE_GAP} apart (a right\nagainst a wrong answer). Where the reward model is near chance, "
          "best-of-n and PPO have nothing to climb but its\nbiases: that is why gold reward falls under "
          "optimisation on those prompts (lessons 04, 06, 08).")

# %% 6. Taking the length bias out: ODIN
# The annotators' liking for length is a known bias, and response length is cheap to measure, so it can be
# separated out (Chen et al. 2024, "ODIN"): a second linear head on the same trunk, trained so that its score
# follows length while the first head's score is kept uncorrelated with length (and the two heads' weights
# orthogonal). The Bradley-Terry loss sees the sum of the two scores, so together they can still fit the
# annotators' labels; afterwards the length head is dropped and RL sees the first head alone. Same pairs,
# same steps, one flag:
odin = train_reward(make_config(RewardConfig, overrides={"preset": preset, "out_dir": out_dir, "truncate": True,
                                                         "length_head_coef": 1.0, "run_name": "reward_odin"}))
rows_6 = [("validation accuracy vs gold", "val_gold_accuracy"), ("validation accuracy vs labels", "val_accuracy"),
          ("prefers + filler sentence", "rm_prefers_length"), ("prefers + flattering opener", "rm_prefers_flattery"),
          ("corr(score, length), SFT samples", "corr_score_length"),
          ("on-policy gold accuracy, held-out", "on_policy_gold_accuracy_heldout")]
print(f"\n{'':<36}{'default':>10}{'ODIN':>10}")
for label, key in rows_6:
    if key in rm and key in odin:
        print(f"{label:<36}{rm[key]:>10.3f}{odin[key]:>10.3f}")
print(f"With the length head dropped, an added filler sentence wins on {odin['rm_prefers_length']:.0%} of prompts "
      f"(default: {rm['rm_prefers_length']:.0%}), a flattering\nopener on {odin['rm_prefers_flattery']:.0%} "
      f"(default: {rm['rm_prefers_flattery']:.0%}). Only length was separated out: a bias has to be named and "
      "measured before it\ncan be taken out this way.")
fig, ax = plt.subplots(figsize=(8, 4.2))
bars_6 = [(k, label) for k, label in (("rm_prefers_length", "prefers\n+ filler sentence"),
                                       ("rm_prefers_flattery", "prefers\n+ flattering opener"),
                                       ("val_gold_accuracy", "gold accuracy,\nvalidation pairs"),
                                       ("on_policy_gold_accuracy_heldout",
                                        "gold accuracy, SFT samples\n(held-out prompts)"))
          if k in rm and k in odin]
x6 = range(len(bars_6))
ax.bar([i - 0.2 for i in x6], [rm[k] for k, _ in bars_6], width=0.4, label="default reward model")
ax.bar([i + 0.2 for i in x6], [odin[k] for k, _ in bars_6], width=0.4, label="ODIN (length head dropped)")
ax.set_xticks(list(x6), [label for _, label in bars_6])
ax.set_ylim(0, 1.2)
ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
ax.legend(loc="upper center", ncol=2)
ax.set_ylabel("share of prompts / of pairs")
ax.set_title(f"Separating length from content ({preset}); the gold judge prefers neither addition")
fig.tight_layout()
fig.savefig(f"plots/rm_odin_{preset}.png", dpi=120)
print(f"plot saved to plots/rm_odin_{preset}.png")

# %% Check yourself
# 1. Why can the RM agree with gold more often than the annotators it learned from, and how often at
#    most? (Step 2: their errors are random per pair; fitting many pairs averages them out, up to the
#    label ceiling. Their *bias* is not random --)
# 2. -- so which errors does the RM keep? (Step 4: the systematic ones, flattery and length.)
# 3. Why can a reward model with 0.80 validation accuracy be at chance on the policy's samples? (Step 5:
#    validation pairs are other styles -- rude, wrong, verbose -- while the policy's samples are all polite
#    and short and differ by a few words or in one fact, which it never learned to check.)
# 4. Why read the score at the <|end|> token and normalise it on SFT samples? (The last token has seen
#    the whole response; mean 0 / std 1 on the policy's own samples makes PPO's KL coefficient
#    comparable across reward models.)
# 5. Why is ODIN's quality head less biased than the labels it was trained on? (Step 6: the length head can
#    absorb every length-driven part of a label, so the quality head gains nothing from copying it; the
#    correlation penalty and the orthogonality make sure it does not.)
