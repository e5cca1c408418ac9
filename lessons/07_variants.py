"""Lesson 07 -- the preference-optimisation family side by side: DPO, cDPO, IPO, KTO, ORPO, SimPO and GRPO.

Run:      python lessons/07_variants.py          (preset tiny: 15 minutes on a 2-core CPU after lesson 03, 31 on
                                                   one half as fast; measured)
          python lessons/07_variants.py micro    (about a minute; learns little)
Reads:    out/<preset>/sft/, out/<preset>/pairs/prefs.jsonl, out/<preset>/reward/ (lessons 02-03; run here
          if missing), out/<preset>/pretrain/model.pt (ORPO's starting point)
Writes:   out/<preset>/dpo/, dpo_cdpo/, dpo_ipo/, dpo_kto/, dpo_orpo/, dpo_simpo/, grpo/ (each stage's
          default folder, retrained here so that its time and memory are measured),
          out/<preset>/dpo_precompute_ref_true/ and dpo_precompute_ref_false/, plots/variants_<preset>.png

Every variant trains on the same data: the DPO family on out/<preset>/pairs/prefs.jsonl, GRPO on the
world's RL prompts against the reward model that was fitted to those same pairs. Every one is then
measured by the same harness (`evaluate_policy`: same held-out prompts, same sampling seed, the SFT model
as the KL reference), so the rows are comparable. The losses (summed log-probs unless said otherwise):
  DPO    -log sigmoid(beta h), h = log-ratio(chosen) - log-ratio(rejected)   (Rafailov et al. 2023, eq. 7)
  cDPO   DPO with labels flipped with probability eps: -(1-eps) log s(beta h) - eps log s(-beta h)
         (Mitchell 2023, "A note on DPO with noisy preferences"; it assumes random, symmetric flips --
         our annotators disagree with gold on ~25 % of pairs, partly at random, partly by a systematic
         bias (flattery, length) that smoothing cannot undo)
  IPO    (h - 1/(2 tau))^2: a regression to a finite margin instead of pushing h to infinity
         (Azar et al. 2023, eq. 17)
  KTO    no pairs: each response is desirable or not, valued against a KL reference point z0
         (Ethayarajh et al. 2024, eq. 8); here the pairs are unpaired into chosen = good, rejected = bad
  SimPO  reference-free, length-normalised: -log sigmoid(beta (mean logp_w - mean logp_l) - gamma)
         (Meng et al. 2024, eq. 6)
  ORPO   SFT loss + lambda * -log sigmoid(log odds ratio), MEAN log-probs, no reference (Hong et al.
         2024, eqs. 6-7). ORPO folds SFT into preference training, so by design it starts from the BASE
         (pretrained) model, not from SFT, its chat tokens initialised as SFT initialises them -- its KL
         to SFT measures how far it lands from the SFT model, not a drift away from it
  GRPO   online RL: sample G responses per prompt, score them with the reward model, advantage =
         reward minus the group mean, over the group std; clipped ratio + beta * k3 (Shao et al. 2024,
         eqs. 3-4)

How time and memory are measured. Each run is its own child process (`python -m minirlhf <stage> ...`,
here through `minirlhf.cli.main`, the same function): the wall clock around it (`time.perf_counter`)
covers process start, the reference pass when it is not cached, training and the evaluation; the
summary's `train_seconds` is the optimisation loop alone, the fairest comparison. Peak memory on CPU is
the child's maximum resident set size, read from `os.wait4` (the rusage of that one child). Note that
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` would not do: it is the MAXIMUM over all children
waited for so far, not a sum, so differences between calls do not isolate a run. On CUDA the child also
reports `torch.cuda.max_memory_allocated()` (a fresh process starts at 0, so no reset is needed): the
peak of tensors on the GPU, which is what the precomputed reference saves. RSS includes the Python
interpreter and torch itself (a few hundred MiB), so on micro and tiny the models are a small part of it.

What you should see
  1. A table: held-out gold, KL to SFT, length, time and peak memory per variant, under an SFT row.
     Each variant should beat SFT (gold above the SFT row); any that does not is marked "below SFT",
     and the lesson prints why. On tiny all land below it (measured, gold at KL: SFT 0.222; DPO 0.155 at
     0.54, cDPO 0.176 at 0.17, IPO 0.200 at 0.03 -- it hardly moves --, KTO -0.217 at 6.3, ORPO -0.247 at
     23.0, SimPO 0.119 at 5.5, GRPO 0.004 at 1.8; ORPO's chat tokens start from the forum's markers as
     SFT's do: before they did, it reached -0.758 at KL 109 and almost never ended its turn): the
     reward model fitted to the same pairs ranks the SFT model's own samples at chance (lesson 03, step
     5), so the data carries style and the annotators' bias, not which of the policy's answers is right.
     With the reference precomputed, DPO, cDPO, IPO and KTO hold one model while training, like the
     reference-free SimPO and ORPO, so their memory is close (KTO runs an extra no-grad forward pass for
     its mismatched pairs); GRPO holds the policy, the reference and the reward model and samples
     every iteration, so expect it to need the most memory and time per step.
  2. DPO with the reference's log-probs precomputed once vs the reference model kept in memory and run
     on every batch: the first-step losses agree (both log 2: the policy is the reference), and so does
     every later logged loss to float rounding; the precomputed run's peak is lower by about one model's
     weights plus the reference's forward pass on each batch (on CUDA, read it in max_memory_allocated;
     on CPU it is lost in the process's RSS at micro/tiny sizes -- the model is a few MiB).

Deliberate simplifications: each stage's default hyperparameters (none tuned per variant); one seed;
the numbers on micro are meaningless (10 steps); memory is read per process, not per phase.
"""

# %% Setup
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from minirlhf.checkpoint import load_model
from minirlhf.config import DPOConfig, make_config
from minirlhf.evaluate import evaluate_policy
from minirlhf.plots import plt, read_metrics
from minirlhf.sample import tokenizer_for
from prerequisites import ensure

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
ensure(preset, out_dir, upto="reward")  # GRPO scores its samples with the reward model
cuda = torch.cuda.is_available()

CHILD = """
import json, sys, torch
from minirlhf.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}, f)
sys.exit(rc)
"""


def measured(command: str, folder: str, args: list[str]) -> dict:
    """`minirlhf <command> <args>` in a child process -> its summary.json plus wall time and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak.json")
        argv = [sys.executable, "-c", CHILD, peak_file, command, f"--preset={preset}", f"--out_dir={out_dir}",
                "--progress=false", *args]
        t0 = time.perf_counter()
        if hasattr(os, "wait4"):  # Linux, macOS: the resource usage of exactly this child
            child = subprocess.Popen(argv)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            rss = usage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB on Linux
        else:
            child = subprocess.run(argv)
            rss = float("nan")
        wall = time.perf_counter() - t0
        if child.returncode != 0:
            raise RuntimeError(f"minirlhf {command} {' '.join(args)} failed (exit {child.returncode})")
        cuda_peak = json.load(open(peak_file))["cuda_peak_bytes"]
    with open(os.path.join(base, folder, "summary.json")) as f:
        summary = json.load(f)
    return {**summary, "process_seconds": wall, "peak_rss_mib": rss,
            "cuda_peak_mib": cuda_peak / 2 ** 20 if cuda_peak is not None else None}


# %% 1. The starting point: SFT, measured by the same harness
seed = make_config(DPOConfig, preset=preset).seed  # every stage evaluates with its seed (1337 by default)
device = "cuda" if cuda else "cpu"  # where the stages run ("auto"), so the samples match theirs
sft_path = os.path.join(base, "sft", "model.pt")
tok = tokenizer_for(sft_path)
sft_model, _ = load_model(sft_path, device)
sft_eval, _ = evaluate_policy(sft_model, tok, os.path.join(base, "world"), reference=sft_model, seed=seed)
with open(os.path.join(base, "sft", "summary.json")) as f:
    sft_summary = json.load(f)
print(f"SFT measured here: gold {sft_eval['gold']:+.4f}, KL {sft_eval['kl_k1']:.4f}, length {sft_eval['length']:.1f} "
      f"(its own summary.json: gold {sft_summary['gold']:+.4f})")
weights_mib = sum(p.numel() * p.element_size() for p in sft_model.parameters()) / 2 ** 20
print(f"one model's weights: {weights_mib:.2f} MiB")

# %% 2. Every variant, retrained in its own process (--force) so that its time and memory are measured
VARIANTS = [  # (label, command, extra arguments, the stage folder it writes)
    ("DPO", "dpo", ["--loss=dpo", "--truncate=true"], "dpo"),
    ("cDPO", "dpo", ["--loss=cdpo", "--truncate=true"], "dpo_cdpo"),
    ("IPO", "dpo", ["--loss=ipo", "--truncate=true"], "dpo_ipo"),
    ("KTO", "dpo", ["--loss=kto", "--truncate=true"], "dpo_kto"),
    ("ORPO", "dpo", ["--loss=orpo", "--truncate=true"], "dpo_orpo"),
    ("SimPO", "dpo", ["--loss=simpo", "--truncate=true"], "dpo_simpo"),
    ("GRPO", "grpo", [], "grpo"),
]
results = {}
for label, command, args, folder in VARIANTS:
    print(f"\n---- {label}: minirlhf {' '.join([command, *args])} ----", flush=True)
    results[label] = measured(command, folder, [*args, "--force=true"])

sft_gold = sft_eval["gold"]
mem_col = "CUDA MiB" if cuda else "peak RSS MiB"
print(f"\n{'variant':<8}{'gold':>8}{'vs SFT':>8}{'KL (k1)':>9}{'length':>8}{'train s':>9}{'stage s':>9}"
      f"{'process s':>11}{mem_col:>14}")
print(f"{'SFT':<8}{sft_gold:>+8.3f}{'':>8}{sft_eval['kl_k1']:>9.3f}{sft_eval['length']:>8.1f}")
below = []
for label, s in results.items():
    mem = s["cuda_peak_mib"] if cuda else s["peak_rss_mib"]
    flag = "  <-- below SFT" if s["gold"] < sft_gold else ""
    if flag:
        below.append(label)
    print(f"{label:<8}{s['gold']:>+8.3f}{s['gold'] - sft_gold:>+8.3f}{s['kl_k1']:>9.3f}{s['length']:>8.1f}"
          f"{s['train_seconds']:>9.1f}{s['seconds']:>9.1f}{s['process_seconds']:>11.1f}{mem:>14.0f}{flag}")
print("gold: the gold judge on the held-out prompts; KL: nats per response to the SFT model on the policy's own\n"
      "samples of all evaluation prompts; train s: the optimisation loop (summary 'train_seconds'); stage s: the whole stage (summary\n"
      "'seconds': reference pass if not cached, training, evaluation); process s: perf_counter around the child.")
print("\nEach variant should beat SFT: its gold above the SFT row. " +
      (f"Below SFT here: {', '.join(below)}." if below else "All of them do here."))
if "ORPO" in below:
    print("(ORPO starts from the base model: within its step budget it must learn the chat format and the preferences\n"
          " at once, while every other row starts from a policy that already had SFT.)")
rm_path = os.path.join(base, "reward", "summary.json")
if [k for k in below if k != "ORPO"] and os.path.exists(rm_path):
    with open(rm_path) as f:
        rm = json.load(f)
    if "on_policy_gold_accuracy_heldout" in rm:
        print(f"({', '.join(k for k in below if k != 'ORPO')}: how much can these pairs teach about the policy's own "
              f"answers? The reward model\n fitted to them orders pairs of the SFT model's samples as the gold judge "
              f"does {rm['on_policy_gold_accuracy_heldout']:.2f} of the time\n on held-out prompts "
              f"({rm['on_policy_gold_accuracy_train']:.2f} on training prompts; 0.5 = chance; lesson 03, step 5). Near "
              "chance, the pairs carry\n style and the annotators' taste for length and flattery, not which answer is "
              "right: learning them moves a\n policy away from SFT without gaining gold. Compare each row's gold with "
              "its KL.)")
if cuda:
    print("peak RSS (host) per variant: " + ", ".join(f"{k} {v['peak_rss_mib']:.0f}" for k, v in results.items())
          + " MiB")

labels = ["SFT", *results]
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
colours = ["black"] + ["tab:red" if k in below else "tab:blue" for k in results]
axes[0].bar(labels, [sft_gold, *[s["gold"] for s in results.values()]], color=colours)
axes[0].axhline(sft_gold, color="black", lw=0.8, ls="--", label="SFT")
axes[0].set_title("held-out gold reward (red: below SFT)")
axes[0].legend(fontsize=8)
axes[1].bar(labels, [sft_eval["kl_k1"], *[s["kl_k1"] for s in results.values()]], color="tab:orange")
axes[1].set_title("KL to the SFT model (nats per response)")
mem_key = "cuda_peak_mib" if cuda else "peak_rss_mib"
axes[2].bar(list(results), [s[mem_key] for s in results.values()], color="tab:grey")
axes[2].set_title("peak GPU memory (MiB)" if cuda else "peak resident memory of the process (MiB)")
for ax in axes:
    ax.tick_params(axis="x", rotation=30)
fig.suptitle(f"Preference-optimisation variants on the {preset} preset (stage defaults, one seed)")
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/variants_{preset}.png", dpi=120)
print(f"\nplot saved to plots/variants_{preset}.png")

# %% 3. DPO's precomputed reference: the same losses, one model fewer in memory
steps = min(make_config(DPOConfig, preset=preset).max_steps, 20)  # the peak comes early; 20 steps show the losses
pre = {}
for flag in ("true", "false"):
    folder = f"dpo_precompute_ref_{flag}"
    for cached in glob.glob(os.path.join(base, folder, "ref_logps_*.pt")):
        os.remove(cached)  # this lesson's own folder: the run pays for its reference pass, as a first run does
    print(f"\n---- DPO, --precompute_ref={flag} ----", flush=True)
    pre[flag] = measured("dpo", folder, ["--truncate=true", f"--precompute_ref={flag}", f"--run_name={folder}",
                                         f"--max_steps={steps}", "--log_interval=1", "--force=true"])
    pre[flag]["rows"] = read_metrics(os.path.join(base, folder, "metrics.jsonl"))
first = {flag: r["rows"][0]["loss"] for flag, r in pre.items()}
worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(pre["true"]["rows"], pre["false"]["rows"]))
print(f"\n{'reference':<26}{'first-step loss':>17}{'peak RSS MiB':>14}{'CUDA MiB':>10}{'stage s':>9}")
for flag, what in (("true", "precomputed once"), ("false", "model kept, run per batch")):
    r = pre[flag]
    gpu = "-" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
    print(f"{what:<26}{first[flag]:>17.8f}{r['peak_rss_mib']:>14.0f}{gpu:>10}{r['seconds']:>9.1f}")
print(f"|first-step difference| = {abs(first['true'] - first['false']):.2e}; largest difference over all "
      f"{len(pre['true']['rows'])} logged losses = {worst:.2e}")
assert abs(first["true"] - first["false"]) < 1e-6, "the two reference paths must give the same first-step loss"
saved = pre["false"][mem_key] - pre["true"][mem_key]
print(f"memory saved by precomputing: {saved:+.1f} MiB ({'GPU' if cuda else 'RSS'}); one model's weights are "
      f"{weights_mib:.2f} MiB.")
if not cuda:
    print("On CPU the RSS also holds the interpreter, torch and the allocator's free pages, so at micro/tiny sizes a\n"
          "difference of a few MiB either way is noise; the saving is real but smaller than that noise.")
print("On the gpt2 preset (124M parameters, about 0.5 GB in fp32) the saving is the whole second model plus its\n"
      "activations -- the reason libraries offer this switch.")

# %% Check yourself
# 1. Which variants need the reference model at all, and what does that cost? (DPO, cDPO, IPO, KTO: one
#    extra forward pass per pair, once, if precomputed -- step 3; SimPO and ORPO need none.)
# 2. Why can the reference's log-probs be precomputed for DPO but not for GRPO or PPO? (DPO's data is fixed:
#    the same (prompt, response) pairs every epoch. RL scores the policy's fresh samples, so the reference
#    must run on every rollout.)
# 3. Why does SimPO average log-probs over tokens while DPO sums them? (Without a reference to subtract,
#    a summed log-prob mostly measures length; averaging removes that, and matches the average likelihood
#    that generation follows (Meng et al. 2024, §2). DPO's reference removes the low base level of long
#    responses' log-probs, but its log-ratio is still a sum over tokens, so a longer response can collect
#    a larger implicit reward: DPO is known to lengthen outputs (Park et al. 2024).)
# 4. ORPO starts from the base model. What does its row's KL to SFT tell you? (Not drift: how close
#    one-stage training landed to the two-stage SFT model. Compare its gold to SFT's to see what skipping
#    SFT costs at this budget.)
# 5. Which variant would you pick under a fixed GPU-memory budget, and which under a fixed wall-clock
#    budget? (Read the memory and time columns of step 2 next to gold.)
