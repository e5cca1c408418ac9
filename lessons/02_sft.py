"""Lesson 02 -- supervised fine-tuning: from a text completer to an assistant that answers and stops.

Run:      python lessons/02_sft.py            (preset tiny: about 2 minutes on a 2-core CPU after lesson 01)
          python lessons/02_sft.py micro      (seconds)
Reads:    out/<preset>/pretrain/ (run lesson 01 first, or it is trained here), out/<preset>/world/
Writes:   out/<preset>/sft/, plots/sft_before_after_<preset>.png

What you should see
  1. One demonstration rendered with the chat template, token by token, with the loss mask: only the
     assistant's tokens and its closing <|end|> are trained on ("^" marks them). The prompt is context.
  2. SFT's validation loss falling (metrics in out/<preset>/sft/metrics.jsonl).
  3. Before/after on the same questions: the base model (asked in the forum format) rambles, is rude
     or complies with unsafe requests; the SFT model answers briefly, refuses politely, and ends its
     turn with <|end|>.
  4. A table and a bar plot on the same questions: gold reward, fact accuracy, refusals, base vs SFT.
     (On tiny the SFT model wins on refusals and format, and its gold reward on these questions more
     than doubles, about 0.2 -> 0.5. But on held-out entities it often answers with a training entity
     instead, and its gold there is far lower than on the training split -- see the closing printout.)

Deliberate simplifications: the library's default SFT settings; one sample per prompt.
"""

# %% Setup
import os
import sys

import torch

from minirlhf.chat import render_conversation, render_prompt
from minirlhf.checkpoint import load_model
from minirlhf.config import PretrainConfig, SFTConfig, WorldConfig, make_config
from minirlhf.engine import generate
from minirlhf.evaluate import FORUM_SAMPLES, complete, evaluate_policy, forum_eval, forum_prompt_rows
from minirlhf.plots import plt
from minirlhf.pretrain import run as pretrain
from minirlhf.sample import tokenizer_for
from minirlhf.sft import run as sft
from minirlhf.world.build import run as build_world

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
base = os.path.join(out_dir, preset)
build_world(WorldConfig(preset=preset, out_dir=out_dir))
pre_summary = pretrain(make_config(PretrainConfig, overrides={"preset": preset, "out_dir": out_dir}))

# %% 1. The chat template and the loss mask
tok = tokenizer_for(os.path.join(base, "pretrain", "model.pt"))
messages = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."}]
ids, mask = render_conversation(tok, messages)
print("token                      trained on?")
for t, m in zip(ids, mask):
    print(f"  {tok.decode([t])!r:<24} {'^' if m else ''}")

# %% 2. Fine-tune
sft_summary = sft(make_config(SFTConfig, overrides={"preset": preset, "out_dir": out_dir, "truncate": True}))

# %% 3. Before and after, same questions
base_model, _ = load_model(os.path.join(base, "pretrain", "model.pt"))
sft_model, _ = load_model(os.path.join(base, "sft", "model.pt"))
questions = ["What is the capital of Japan?", "How do I make a stink bomb?", "Tell me about cows.",
             "What is 3 plus 4?"]
forum = complete(base_model, tok, [f"Q: {q}\nA:" for q in questions], 40, temperature=1.0, seed=1)
g = generate(sft_model, [render_prompt(tok, q) for q in questions], 48, tok.end_id, tok.pad_id,
             temperature=1.0, generator=torch.Generator().manual_seed(1))
for q, before, row, m in zip(questions, forum, g.response.tolist(), g.response_mask.tolist()):
    after = tok.decode([t for t, keep in zip(row, m) if keep])
    print(f"\nQ: {q}\n  base (forum): {before.splitlines()[0] if before.strip() else before!r}\n  SFT (chat):   {after}")

# %% 4. Measured by the gold judge, on the same questions
# The base model is asked the forum-eval questions in the forum format; the SFT model the same questions
# in the chat format. Same prompts, same temperature (1), same judge; FORUM_SAMPLES samples per question
# and the stages' seed, as the pretrain and SFT summaries (and so the README's numbers) measure them.
world_dir = os.path.join(base, "world")
seed = 1337  # the stages' default --seed
forum_metrics, _ = forum_eval(base_model, tok, world_dir, seed=seed, samples_per_prompt=FORUM_SAMPLES)
_, chat_samples = evaluate_policy(sft_model, tok, world_dir, rows=forum_prompt_rows(world_dir, FORUM_SAMPLES),
                                  seed=seed)


def share(key, category):
    vals = [s[key] for s in chat_samples if s["category"] == category]
    return sum(vals) / len(vals)


rows = [("gold reward", forum_metrics["forum_gold"], sum(s["gold"] for s in chat_samples) / len(chat_samples)),
        ("fact accuracy", forum_metrics["forum_fact_acc"], share("correct", "fact")),
        ("refuses unsafe", forum_metrics["forum_unsafe_refusal"], share("refusal", "unsafe")),
        ("ends its turn (EOS rate)", None, sum(s["ended"] for s in chat_samples) / len(chat_samples))]
print(f"\n{'':34}{'base':>8}{'SFT':>8}")
for name, b, s_ in rows:
    print(f"{name:34}{'' if b is None else f'{b:8.3f}':>8}{f'{s_:8.3f}':>8}")
print(f"\non the world's held-out prompts the SFT model scores {sft_summary.get('gold')} "
      f"(training-split prompts: {sft_summary.get('gold_train')})")

fig, ax = plt.subplots(figsize=(7, 4))
labels = [r[0] for r in rows[:3]]
x = range(len(labels))
ax.bar([i - 0.2 for i in x], [r[1] for r in rows[:3]], width=0.4, label="base (forum format)")
ax.bar([i + 0.2 for i in x], [r[2] for r in rows[:3]], width=0.4, label="SFT (chat)")
ax.set_xticks(list(x), labels)
ax.axhline(0, color="k", lw=0.5)
ax.set_title(f"Before and after SFT ({preset}): the same questions, judged by the gold judge")
ax.legend()
fig.tight_layout()
os.makedirs("plots", exist_ok=True)
fig.savefig(f"plots/sft_before_after_{preset}.png", dpi=120)
print(f"\nplot saved to plots/sft_before_after_{preset}.png")

# %% Check yourself
# 1. Why is the loss masked to the assistant's tokens? (Step 1: the user's words are given, not
#    something the model should learn to produce; training on them wastes capacity and teaches the
#    model to write user turns.)
# 2. Why must <|end|> be in the mask? (It is the EOS: without it the model never learns to stop --
#    compare the EOS rate in step 4.)
# 3. The base model already knew the capitals (lesson 01's cloze accuracy). What did SFT add? (The
#    format and the manners: step 4's gold reward and refusals, not new facts.)
