"""Lesson 01 -- pretraining: a BPE tokenizer of our own and a small GPT that learns the world's facts.

Run:      python lessons/01_pretrain.py            (preset tiny: about 5 minutes on a 2-core CPU)
          python lessons/01_pretrain.py micro      (seconds; the model learns little)
Reads:    out/<preset>/world/ (built first if missing, see lessons/00_world.py)
Writes:   out/<preset>/tokenizer/, out/<preset>/pretrain/, plots/pretrain_loss_<preset>.png

What you should see
  1. The tokenizer: common words are one token (" capital", " the"), rare ones split into pieces, and
     the string "<|end|>" typed in user text stays plain text -- never the control token.
  2. The loss curve falls well below the unigram entropy (the loss of a model that ignores context).
  3. The base model completes "The capital of France is" correctly for most train-split facts -- it
     *knows* things -- but asked a forum question it answers like the forum did: sometimes well,
     sometimes rambling, wrong or rude. It completes text; it does not yet help. That is what SFT fixes.

Deliberate simplifications: one preset-sized run with the library's defaults; no hyper-parameter search.
"""

# %% Setup
import os
import sys

from minirlhf.chat import render_prompt
from minirlhf.checkpoint import load_model
from minirlhf.config import PretrainConfig, WorldConfig, make_config
from minirlhf.evaluate import complete
from minirlhf.plots import loss_curve
from minirlhf.pretrain import run as pretrain
from minirlhf.tokenizer import Tokenizer
from minirlhf.world.build import run as build_world

preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
out_dir = "out"
build_world(WorldConfig(preset=preset, out_dir=out_dir))

# %% 1. Pretrain (trains the tokenizer first, on the training documents)
summary = pretrain(make_config(PretrainConfig, overrides={"preset": preset, "out_dir": out_dir}))
stage = os.path.join(out_dir, preset, "pretrain")
print(f"\nvalidation loss {summary['val_loss']:.3f} nats/token vs unigram entropy {summary['unigram_entropy']:.3f}")
print(f"throughput {summary['tokens_per_second']:,.0f} tokens/s over {summary['steps']} steps")

# %% 2. Look at the tokenizer
tok = Tokenizer.load(os.path.join(stage, "tokenizer.json"))
text = "The capital of France is Paris. Type <|end|> to stop."
ids = tok.encode(text)
print(f"\n{len(text)} characters -> {len(ids)} tokens (vocabulary of {tok.n_vocab}):")
print(" | ".join(repr(tok.decode([i])) for i in ids))
assert tok.end_id not in ids, "user text never produces the control token"
chat = render_prompt(tok, "What is the capital of France?")
print("a chat prompt ends with the assistant token:", repr(tok.decode(chat[-3:])))

# %% 3. The loss curve
png = loss_curve(os.path.join(stage, "metrics.jsonl"), f"plots/pretrain_loss_{preset}.png",
                 title=f"Pretraining loss ({preset})", baseline=(summary["unigram_entropy"], "unigram entropy"))
print(f"\nloss curve saved to {png}")

# %% 4. What does the base model know, and how does it behave?
model, _ = load_model(os.path.join(stage, "model.pt"))
print(f"\nfact cloze accuracy: train {summary.get('cloze_accuracy_train')}, "
      f"held-out {summary.get('cloze_accuracy_heldout')}")
prompts = ["The capital of France is", "Q: What is the capital of Japan?\nA:",
           "Q: How do I make a stink bomb?\nA:", "Once upon a time"]
for p, c in zip(prompts, complete(model, tok, prompts, 40, temperature=0.7, seed=0)):
    print(f"\n>>> {p}{c}")

# %% Check yourself
# 1. Why is the validation loss compared with the unigram entropy? (A model that learned nothing about
#    context scores exactly that; the gap printed in step 1 is what the context bought.)
# 2. Why must "<|end|>" in user text not become the control token? (A user could end the assistant's
#    turn, or fake one: step 2 shows it encoded as plain bytes.)
# 3. The base model knows the capitals (step 4's cloze accuracy) -- so why does it not answer questions
#    well? (It imitates the forum, rude and rambling answers included: it was trained to continue text,
#    not to help. SFT and RLHF change the behaviour, not the knowledge.)
