"""Lesson 09 -- your own model and data: import a Hugging Face GPT-2, run DPO on your JSONL, export it back.

Run:      python lessons/09_your_own_model.py                  (a tiny random GPT-2 made here: seconds)
          python lessons/09_your_own_model.py path/to/gpt2     (a local Hugging Face GPT-2 folder, e.g. one
                                                               written by save_pretrained: minutes on a CPU)
Needs:    pip install transformers safetensors   (without them the lesson says so and stops)
Writes:   out/byo/hf_source/ (the model made here), out/byo/imported/, out/byo/my_prefs.jsonl,
          out/byo/micro/dpo/, out/byo/exported/

The same steps on the command line:
    minirlhf import-hf path/to/gpt2 --out=out/byo/imported
    minirlhf dpo --init=out/byo/imported/model.pt --reference=out/byo/imported/model.pt \\
                 --prefs=out/byo/my_prefs.jsonl --eval_prefs=out/byo/my_prefs.jsonl --out_dir=out/byo --preset=micro
    minirlhf export-hf out/byo/micro/dpo/model.pt out/byo/exported

What you should see
  1. Import: our GPT's logits equal transformers' on the same tokens (max difference ~1e-7, float32
     rounding). The vocabulary had no chat tokens, so <|user|>, <|assistant|>, <|end|> and <|pad|> were
     added as new embedding rows, each the mean of the existing rows.
  2. DPO on your file: the loss starts at log 2 = 0.693 (the policy IS the reference, so every implicit
     reward is 0) and falls; the margin between chosen and rejected implicit rewards grows.
  3. Export: transformers loads the folder; its logits equal ours (max difference ~1e-7), its tokenizer and
     chat template produce our token ids, and greedy decoding gives the same continuation.

Deliberate simplifications: the model made here is random and tiny, so what DPO teaches it means nothing
-- the point is the plumbing; DPO runs without TinyWorld, so there is no gold-judge evaluation (build the
world, or bring a judge with `--gold-judge module:function`, for that).
"""

# %% Setup
import importlib.util
import json
import math
import os
import sys

missing = [name for name in ("transformers", "safetensors") if importlib.util.find_spec(name) is None]
if missing:
    print(f"This lesson needs {' and '.join(missing)}: pip install transformers safetensors "
          "(or pip install -e '.[test]'). Skipping it.")
    sys.exit(0)

import torch
import transformers

from minirlhf import checkpoint as ck
from minirlhf.chat import render_prompt
from minirlhf.config import PRESETS, DPOConfig, make_config
from minirlhf.dpo import run as dpo
from minirlhf.engine import generate
from minirlhf.hf import export_hf, import_hf
from minirlhf.hf_bpe import ranks_to_hf_bpe
from minirlhf.tokenizer import Tokenizer, merges_to_ranks, train_bpe
from minirlhf.world import build_world, make_corpus

root = os.path.join("out", "byo")
source = sys.argv[1] if len(sys.argv) > 1 else None
if source in PRESETS and not os.path.isdir(source):  # `python lessons/09_your_own_model.py micro`, like the others
    print(f"Lesson 09 takes a Hugging Face GPT-2 folder, not a preset ({source!r}); going on with the tiny "
          "random GPT-2 made here.")
    source = None
made_here = source is None
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

# %% 0. A Hugging Face GPT-2 folder (made here when you did not pass one)
if made_here:
    source = os.path.join(root, "hf_source")
    # a byte-level BPE with GPT-2's conventions: 256 bytes, merges, <|endoftext|> -- and no chat tokens
    docs, _ = make_corpus(build_world("micro", 1337))
    ranks = merges_to_ranks(train_bpe("<|endoftext|>".join(docs), 200))
    vocab, merges = ranks_to_hf_bpe(ranks, {"<|endoftext|>": len(ranks)})
    transformers.GPT2Tokenizer(vocab=vocab, merges=merges).save_pretrained(source)  # transformers' own files
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=len(vocab),
                                     bos_token_id=len(ranks), eos_token_id=len(ranks))
    transformers.GPT2LMHeadModel(config).save_pretrained(source)
    print(f"made a random GPT-2 ({config.n_layer} layers, {config.n_embd} channels, vocabulary {len(vocab)}) "
          f"in {source}: {sorted(os.listdir(source))}")

# %% 1. Import: Hugging Face folder -> our model.pt + tokenizer.json
imported = os.path.join(root, "imported")
summary = import_hf(source, imported)
print(f"\nimported {summary['n_layer']} layers x {summary['n_embd']} channels, context {summary['block_size']}, "
      f"vocabulary {summary['vocab_size']}")
print(f"chat tokens added (mean-initialised rows): {summary['added_tokens'] or 'none'}")

ours, _ = ck.load_model(os.path.join(imported, "model.pt"))
theirs = transformers.GPT2LMHeadModel.from_pretrained(source).eval()
V_old = theirs.config.vocab_size
ids = torch.randint(0, V_old, (2, 32), generator=torch.Generator().manual_seed(0))  # (B, T)
with torch.no_grad():
    diff = (ours(ids)[..., :V_old] - theirs(ids).logits).abs().max().item()  # the old vocabulary's columns
print(f"max |our logits - transformers' logits| = {diff:.2e}")

# %% 2. Your data: preference pairs in the TRL JSONL format, then DPO
pairs = [("How do I boil an egg?", "Boil it for eight minutes, then cool it in cold water.", "Figure it out."),
         ("What is the capital of France?", "Paris.", "Why would I tell you?"),
         ("Can you recommend a book?", "Try 'The Hobbit'; it is short and fun.", "No."),
         ("How do I say thanks in Spanish?", "You say 'gracias'.", "Look it up yourself."),
         ("What is two plus two?", "Four.", "Stop asking me things."),
         ("Any tips for sleeping better?", "Keep a regular bedtime and avoid screens late.", "Just sleep.")]
rows = []
for i, (q, good, bad) in enumerate(pairs):
    if i % 2:  # the standard form: plain strings
        rows.append({"prompt": q, "chosen": good, "rejected": bad})
    else:  # the conversational form: message lists
        rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}]})
prefs = os.path.join(root, "my_prefs.jsonl")
with open(prefs, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
print(f"\nwrote {len(rows)} preference pairs to {prefs}")

init = os.path.join(imported, "model.pt")
result = dpo(make_config(DPOConfig, overrides={
    "preset": "micro", "out_dir": root, "init": init, "reference": init, "prefs": prefs, "eval_prefs": prefs,
    "max_steps": 30, "batch_size": 6, "lr": 1e-3 if made_here else 1e-5, "warmup_steps": 3, "log_interval": 1,
    "eval_interval": 30, "truncate": True, "progress": False, "force": True}))
with open(os.path.join(root, "micro", "dpo", "metrics.jsonl")) as f:
    log = [json.loads(line) for line in f if "loss" in line]
print(f"DPO loss: step {log[0]['step']} {log[0]['loss']:.4f} (before any update; log 2 = {math.log(2):.4f}) -> "
      f"step {log[-1]['step']} "
      f"{log[-1]['loss']:.4f}; reward margin {log[0]['rewards/margins']:+.3f} -> {log[-1]['rewards/margins']:+.3f}")

# %% 3. Export: our model.pt -> a folder transformers loads
exported = os.path.join(root, "exported")
dpo_model = os.path.join(root, "micro", "dpo", "model.pt")
info = export_hf(dpo_model, exported)
print(f"\nexported {info['architecture']} to {exported}: {info['files']}")
hf_policy = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
policy, _ = ck.load_model(dpo_model)
tok = Tokenizer.load(os.path.join(root, "micro", "dpo", "tokenizer.json"))

question = "How do I boil an egg?"
prompt = render_prompt(tok, question)
hf_prompt = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       tokenize=False)
print(f"transformers' chat template gives our prompt ids: {hf_tok(hf_prompt)['input_ids'] == prompt}")
x = torch.tensor([prompt])  # (1, P)
with torch.no_grad():
    diff = (policy(x) - hf_policy(x).logits).abs().max().item()
print(f"max |our logits - transformers' logits| after export = {diff:.2e}")

ours_greedy = generate(policy, [prompt], 12, tok.end_id, tok.pad_id, temperature=0.0)
ours_ids = [t for t, m in zip(ours_greedy.response[0].tolist(), ours_greedy.response_mask[0].tolist()) if m]
with torch.no_grad():
    hf_ids = hf_policy.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                                eos_token_id=tok.end_id, pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
print(f"greedy continuation, ours:         {tok.decode(ours_ids)!r}")
print(f"greedy continuation, transformers: {tok.decode(hf_ids)!r}  (same: {ours_ids == hf_ids})")

# %% Check yourself
# 1. Why are the attention and MLP weights transposed on import, but not the embeddings? (Hugging Face's
#    GPT-2 stores them in Conv1D layers, (in, out); nn.Linear stores (out, in). Embeddings are tables.)
# 2. Why do new tokens need rows at all, and why the mean? (The output layer is tied to the embedding, so a
#    new token's logit is its row . h: a random row gives it an arbitrary probability; the mean row makes
#    it look like an average token until SFT teaches it -- step 1's logits on the old vocabulary did not move.)
# 3. Why does DPO's loss start at exactly log 2? (Step 2: policy == reference, so beta * log-ratio is 0 for
#    chosen and rejected alike, and -log sigmoid(0) = log 2.)
# 4. The exported reward model (GPT2ForSequenceClassification) reads its score at the last token that is
#    not the pad token. What goes wrong if a prompt contained <|pad|> as text? (Our encoder never emits
#    the control token for text, so that cannot happen here; with a tokenizer that splits special-token
#    strings out of user text, the score would be read at the wrong position.)
