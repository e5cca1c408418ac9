"""Hugging Face interop: import a GPT-2 checkpoint folder into our GPT, export our checkpoints back.

Run it:
    minirlhf import-hf path/to/gpt2 --out=out/hf/gpt2          # -> out/hf/gpt2/model.pt + tokenizer.json
    minirlhf sft --preset=gpt2 --init=out/hf/gpt2/model.pt --sft-data=my_sft.jsonl --eval_data=my_eval.jsonl
    minirlhf export-hf out/gpt2/dpo/model.pt out/hf/gpt2-dpo    # -> a folder transformers loads

    from minirlhf.model import GPT
    model = GPT.from_hf("path/to/gpt2")        # the weights alone, vocabulary exactly as in the folder
    from transformers import GPT2LMHeadModel
    hf_model = GPT2LMHeadModel.from_pretrained("out/hf/gpt2-dpo")

Nothing is ever downloaded: PATH is a local folder holding `config.json` and `model.safetensors` (or
`pytorch_model.bin`, or a sharded `*.index.json`) as `save_pretrained` writes them. Reading or writing
`.safetensors` needs the `safetensors` package (`pip install safetensors`); `.bin` files need only torch.

Weights. Our GPT is GPT-2 with Hugging Face's parameter names, so the map is one to one:
    transformer.wte, wpe, h.{i}.ln_1, h.{i}.ln_2, ln_f, every bias   the same tensor
    h.{i}.attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj  .weight    TRANSPOSED: Hugging Face's Conv1D
        stores (in, out) and computes x @ W + b; nn.Linear stores (out, in) and computes x @ W.T + b
    lm_head.weight                                                   tied to wte in both (not stored)
    h.{i}.attn.bias, attn.masked_bias (old checkpoints)              causal-mask buffers, not weights: ignored
The architecture must be GPT-2's exactly: tanh-approximated GELU (`gelu_new`), MLP width 4 * n_embd,
LayerNorm eps 1e-5, attention scaled by 1/sqrt(head_dim), tied embeddings, no cross-attention.
Anything else is refused with a one-line error naming the config key, never imported approximately.
`n_positions` becomes `block_size`.

Tokenizer. Read by `minirlhf.hf_tokenizer.load_hf_tokenizer`: the folder's `vocab.json` + `merges.txt` (or
a Hugging Face `tokenizer.json`) become tiktoken ranks with unchanged ids, and settings with which
transformers would encode text differently are refused, not ignored (that module says which).

Chat tokens. Our chat template needs `<|user|>`, `<|assistant|>`, `<|end|>`, `<|pad|>` (and
`<|endoftext|>`). Those the vocabulary lacks get the next ids, and the embedding matrix (tied to the
output layer) grows by one row per new token, initialised to the MEAN of the existing token embeddings
(Hewitt 2021, "Initializing New Word Embeddings for Pretrained Language Models": the mean keeps the new
tokens' initial probabilities close to the average token's instead of arbitrary). The added tokens and
the rule are recorded in model.pt under `hf_import`. An imported base model is recorded as stage
"pretrain", so `minirlhf sft` initialises the chat tokens from the forum markers as it does for our own
base models (see sft.init_chat_embeddings).

Export. A GPT exports as `GPT2LMHeadModel`: config.json, model.safetensors, and the tokenizer next to the
checkpoint as vocab.json + merges.txt + tokenizer_config.json (our control tokens as special added tokens,
the chat template as a Jinja `chat_template`). A reward or value model (trunk + ScalarHead) exports as
`GPT2ForSequenceClassification` with `num_labels = 1`. Its `score` layer has no bias, while our head
computes gain * (w . h + b) + offset on the final hidden state h = ln_f(x) = g * n(x) + beta. The export
folds everything into the score weight and the final LayerNorm's bias, exactly:
    score.weight = gain * w                                   (1, C)
    ln_f.bias    = beta + c * score.weight / |score.weight|^2,  c = gain * b + offset
so score.weight . ln_f(x) = gain * (w . h) + c. (Only the score reads ln_f in that model.) Transformers
reads the score at the last token that is not `pad_token_id` (our `<|pad|>`), which is our "last real
token" as long as a sequence never contains `<|pad|>` itself (our encoder never emits it). With left
padding, pass `position_ids = cumsum(attention_mask) - 1` to transformers as we do internally: it
counts positions from the first column otherwise.

Deliberate simplifications: GPT-2 only (no GPT-Neo/J/NeoX or Llama layouts); float32 weights on import
and export; a vocabulary with extra embedding rows the tokenizer never produces (padded vocabularies) is
refused rather than mapped; the chat template in the exported tokenizer treats a literal "<|end|>" in user
text as the control token (as Hugging Face templates do), where our own encoder never does.
"""

from __future__ import annotations

import json
import os

import torch

from minirlhf.config import ModelConfig
from minirlhf.hf_tokenizer import load_hf_tokenizer, read_json_object
from minirlhf.tokenizer import END, ENDOFTEXT, PAD, Tokenizer

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # old causal-mask buffers in pytorch_model.bin
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
LM_ARCH, SCORE_ARCH = "GPT2LMHeadModel", "GPT2ForSequenceClassification"
CHAT_TEMPLATE = (  # our render_conversation / render_prompt as Jinja (a system message joins the first user turn)
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\\n\\n' -%}"
    "{%- elif m['role'] == 'user' -%}<|user|>{{ ns.system + m['content'] }}<|end|>{%- set ns.system = '' -%}"
    "{%- else -%}<|assistant|>{{ m['content'] }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


# ----------------------------------------------------------------------------------------------------
# reading a Hugging Face folder


def _need_folder(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a folder (expected a Hugging Face GPT-2 folder with config.json "
                                "and model.safetensors or pytorch_model.bin)")


def read_hf_config(path: str) -> tuple[ModelConfig, dict]:
    """config.json of a GPT-2 folder -> (our ModelConfig, the raw dict); refuses what we cannot represent."""
    _need_folder(path)
    cpath = os.path.join(path, "config.json")
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face GPT-2 folder)")
    raw = read_json_object(cpath)
    if raw.get("model_type") != "gpt2":
        raise ValueError(f"{cpath}: model_type is {raw.get('model_type')!r}; only GPT-2 ('gpt2') checkpoints "
                         "can be imported")
    for key in ("vocab_size", "n_embd", "n_layer", "n_head"):
        if not isinstance(raw.get(key), int):
            raise ValueError(f"{cpath}: key {key!r} missing or not an int")
    n_embd, n_head = raw["n_embd"], raw["n_head"]
    block_size = raw.get("n_positions", raw.get("n_ctx", 1024))
    unsupported = [  # (condition, what) -- each a difference our GPT cannot represent exactly
        (raw.get("n_inner") not in (None, 4 * n_embd), f"n_inner={raw.get('n_inner')} (ours is 4 * n_embd)"),
        (raw.get("activation_function", "gelu_new") not in TANH_GELUS,
         f"activation_function={raw.get('activation_function')!r} (ours is GPT-2's tanh GELU, 'gelu_new')"),
        (raw.get("layer_norm_epsilon", 1e-5) != 1e-5, f"layer_norm_epsilon={raw.get('layer_norm_epsilon')} "
                                                      "(ours is 1e-5)"),
        (raw.get("scale_attn_weights", True) is not True, "scale_attn_weights=false"),
        (raw.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true"),
        (raw.get("add_cross_attention", False), "add_cross_attention=true"),
        (n_embd % n_head != 0, f"n_embd={n_embd} not divisible by n_head={n_head}"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ValueError(f"{cpath}: unsupported architecture: {what}")
    cfg = ModelConfig(n_layer=raw["n_layer"], n_head=n_head, n_embd=n_embd, block_size=block_size,
                      vocab_size=raw["vocab_size"], dropout=0.0, bias=True)
    return cfg, raw


def _load_weight_file(fpath: str) -> dict[str, torch.Tensor]:
    if fpath.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise RuntimeError(f"{fpath}: reading .safetensors needs the safetensors package "
                               "(pip install safetensors)") from None
        return load_file(fpath)
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"could not load {fpath}: {e}") from e


def read_hf_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The folder's tensors (float32) with keys normalised to 'transformer.<name>' -> (tensors, file name)."""
    _need_folder(path)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        fpath = os.path.join(path, name)
        if os.path.isfile(fpath):
            break
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin (nor a sharded *.index.json)")
    if name.endswith(".index.json"):  # sharded: {"weight_map": {tensor name: shard file}}
        weight_map = read_json_object(fpath).get("weight_map")
        if not (isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())):
            raise ValueError(f"{fpath}: key 'weight_map' missing or not an object mapping tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        raw = {}
        for shard in shards:
            raw.update(_load_weight_file(os.path.join(path, shard)))
    else:
        raw = _load_weight_file(fpath)
    tensors = {}
    for key, value in raw.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if not (key.startswith("transformer.") or key in ("lm_head.weight", "score.weight")):
            key = "transformer." + key  # old checkpoints saved GPT2Model's names without the prefix
        tensors[key] = value.float()
    return tensors, name


def gpt_state_from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors -> our GPT's state dict (Conv1D weights transposed, lm_head tied)."""
    from minirlhf.model import GPT

    with torch.device("meta"):  # shapes and names only, no memory
        expected = GPT(cfg).state_dict()
    state = {}
    for key, ref in expected.items():
        if key == "lm_head.weight":
            continue
        if key not in tensors:
            raise ValueError(f"{source}: missing tensor {key!r}")
        value = tensors[key]
        if key.endswith(TRANSPOSED):
            value = value.t()  # Conv1D (in, out) -> Linear (out, in)
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)} "
                             "from config.json")
        state[key] = value.contiguous()
    wte = state["transformer.wte.weight"]  # (V, C)
    if "lm_head.weight" in tensors and not torch.equal(tensors["lm_head.weight"], wte):
        raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; our GPT ties them")
    state["lm_head.weight"] = wte
    unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight", "score.weight"})
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:4]} (not a plain GPT-2)")
    return state


def load_hf_model(path: str):
    """A Hugging Face GPT-2 folder -> our GPT (from GPT2LMHeadModel / GPT2Model) or ScalarModel (from
    GPT2ForSequenceClassification with one label). Weights exactly as stored; the vocabulary unchanged."""
    from minirlhf.model import GPT, ScalarModel

    cfg, raw = read_hf_config(path)
    tensors, fname = read_hf_weights(path)
    source = os.path.join(path, fname)
    architecture = (raw.get("architectures") or [LM_ARCH])[0]
    if architecture not in (LM_ARCH, SCORE_ARCH, "GPT2Model"):
        raise ValueError(f"{path}/config.json: architecture {architecture!r} is not supported (expected "
                         f"{LM_ARCH} or {SCORE_ARCH})")
    gpt = GPT(cfg)
    gpt.load_state_dict(gpt_state_from_hf(tensors, cfg, source))
    if architecture != SCORE_ARCH:
        return gpt.eval()
    score = tensors.get("score.weight")  # (n_labels, C)
    if score is None or tuple(score.shape) != (1, cfg.n_embd):
        raise ValueError(f"{source}: a sequence-classification model must have score.weight of shape "
                         f"(1, {cfg.n_embd}) (num_labels = 1) to become a reward model")
    model = ScalarModel(gpt)
    with torch.no_grad():
        model.head.linear.weight.copy_(score)
        model.head.linear.bias.zero_()
    return model.eval()


def load_hf_gpt2(path: str):
    """A Hugging Face GPT2LMHeadModel folder -> our GPT with identical logits (what `GPT.from_hf` calls)."""
    from minirlhf.model import GPT

    model = load_hf_model(path)
    if not isinstance(model, GPT):
        raise ValueError(f"{path}: holds a sequence-classification (reward) model; use load_hf_model")
    return model


# ----------------------------------------------------------------------------------------------------
# import


@torch.no_grad()
def extend_vocab(gpt, n_new: int) -> None:
    """Grow the (tied) token embedding by `n_new` rows, each the mean of the existing rows."""
    if n_new <= 0:
        return
    wte = gpt.transformer.wte.weight  # (V, C)
    new_rows = wte.mean(0, keepdim=True).expand(n_new, -1)  # (n_new, C)
    grown = torch.nn.Embedding(wte.size(0) + n_new, wte.size(1), device=wte.device, dtype=wte.dtype)
    grown.weight.copy_(torch.cat([wte, new_rows]))  # (V + n_new, C)
    gpt.transformer.wte = grown
    gpt.lm_head = torch.nn.Linear(wte.size(1), grown.weight.size(0), bias=False)
    gpt.lm_head.weight = grown.weight  # keep the output layer tied
    gpt.config.vocab_size = grown.weight.size(0)


def import_hf(path: str, out: str, tokenizer: str = "auto") -> dict:
    """Write `out`/model.pt (our format) and `out`/tokenizer.json from a Hugging Face GPT-2 folder.

    Returns a summary: the model shape, the tokens added and where the files went.
    """
    from minirlhf import checkpoint as ck
    from minirlhf.model import GPT

    model = load_hf_model(path)
    gpt = model if isinstance(model, GPT) else model.trunk
    V = gpt.config.vocab_size
    tok = load_hf_tokenizer(path, tokenizer, V)
    added = {s: i for s, i in tok.special_tokens.items() if i >= V}
    if sorted(added.values()) != list(range(V, V + len(added))) or tok.n_vocab != V + len(added):
        raise ValueError(f"{path}: the tokenizer's ids (0..{tok.n_vocab - 1 - len(added)}) do not match the "
                         f"model's {V} embedding rows")
    extend_vocab(gpt, len(added))
    stage = read_json_object(os.path.join(path, "config.json")).get("minirlhf_stage")  # set by export_hf
    stage = stage or ("pretrain" if added and model is gpt else "hf-import")
    record = {"source": os.path.abspath(path), "added_tokens": added,
              "new_rows_init": "mean of the existing token embeddings" if added else None}
    os.makedirs(out, exist_ok=True)
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, stage, hf_import=record))
    tok.save(os.path.join(out, "tokenizer.json"))
    c = gpt.config
    return {"model": os.path.join(out, "model.pt"), "tokenizer": os.path.join(out, "tokenizer.json"),
            "stage": stage, "kind": "reward/value model" if model is not gpt else "language model",
            "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.block_size,
            "vocab_size": c.vocab_size, "added_tokens": added}


# ----------------------------------------------------------------------------------------------------
# export


def hf_state_from_gpt(gpt, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """Our GPT's weights in Hugging Face's layout (Conv1D weights transposed, biases filled with zeros
    for a bias-free model, lm_head left out: it is tied). Fresh contiguous float32 tensors."""
    tensors = {}
    for key, value in gpt.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.endswith(TRANSPOSED):
            value = value.t()  # Linear (out, in) -> Conv1D (in, out)
        tensors[prefix + key.removeprefix("transformer.")] = value.detach().float().contiguous().clone()
    if not gpt.config.bias:  # Hugging Face's GPT-2 always has biases: zeros are the same function
        for name, module in gpt.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                tensors[prefix + name.removeprefix("transformer.") + ".bias"] = torch.zeros(module.weight.shape[0])
    return tensors


@torch.no_grad()
def fold_scalar_head(model, tensors: dict[str, torch.Tensor]) -> None:
    """Put a ScalarHead (gain, offset, linear bias) into a bias-free score layer, exactly (module docstring)."""
    head = model.head
    w = (head.gain * head.linear.weight).float()  # (1, C)
    c = (head.gain * head.linear.bias + head.offset).float()  # (1,)
    key = "transformer.ln_f.bias"
    ln_f_bias = tensors.get(key, torch.zeros(w.size(1)))  # (C,)
    if w[0].dot(w[0]) == 0:
        raise ValueError("the reward model's head weight is all zeros: its score is a constant, nothing to export")
    tensors[key] = (ln_f_bias + c * w[0] / w[0].dot(w[0])).contiguous()  # w . bias gains exactly c
    tensors["score.weight"] = w.contiguous()


def hf_config(cfg: ModelConfig, architecture: str, tok: Tokenizer | None = None, stage: str = "") -> dict:
    """A GPT2Config as a dict for config.json."""
    raw = {"architectures": [architecture], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
           "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
           "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
           "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
           "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
           "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True, "dtype": "float32",
           "minirlhf_stage": stage}
    if tok is not None:
        chat = stage not in ("pretrain", "")
        raw.update(bos_token_id=tok.eot_id, eos_token_id=tok.end_id if chat else tok.eot_id, pad_token_id=tok.pad_id)
    if architecture == SCORE_ARCH:
        raw.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return raw


def write_hf_tokenizer(tok: Tokenizer, out: str, chat: bool, max_length: int) -> list[str]:
    """vocab.json + merges.txt + tokenizer_config.json (control tokens as special added tokens)."""
    vocab_path, merges_path = tok.save_vocab_merges(out)
    config = {
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": max_length,
        "bos_token": ENDOFTEXT, "eos_token": END if chat else ENDOFTEXT, "unk_token": ENDOFTEXT, "pad_token": PAD,
        "added_tokens_decoder": {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False}
                                 for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])},
        "chat_template": CHAT_TEMPLATE,
    }
    cpath = os.path.join(out, "tokenizer_config.json")
    with open(cpath, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return [str(vocab_path), str(merges_path), cpath]


def export_hf(checkpoint: str, out: str) -> dict:
    """Write a folder that transformers loads: GPT2LMHeadModel, or GPT2ForSequenceClassification for a
    reward/value model; plus the tokenizer found next to `checkpoint` (every stage writes one there)."""
    from minirlhf import checkpoint as ck

    try:
        from safetensors.torch import save_file
    except ImportError:
        raise RuntimeError("export-hf writes model.safetensors and needs the safetensors package "
                           "(pip install safetensors)") from None
    state = ck.load_checkpoint(checkpoint)
    is_scalar = any(k.startswith("head.") for k in state.get("model", {}))
    if is_scalar:
        model, _ = ck.load_scalar_model(checkpoint)
        gpt, architecture = model.trunk, SCORE_ARCH
    else:
        model, _ = ck.load_model(checkpoint)
        gpt, architecture = model, LM_ARCH
    tok_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "tokenizer.json")
    tok = Tokenizer.load(tok_path) if os.path.isfile(tok_path) else None
    if tok is None and is_scalar:
        raise FileNotFoundError(f"no tokenizer.json next to {checkpoint}: a reward model's export needs the pad "
                                "token id (transformers reads the score at the last non-pad token)")
    if tok is not None and tok.n_vocab > gpt.config.vocab_size:
        raise ValueError(f"{tok_path} has {tok.n_vocab} ids but the model only {gpt.config.vocab_size} rows")
    tensors = hf_state_from_gpt(gpt)
    if is_scalar:
        fold_scalar_head(model, tensors)
    stage = state.get("stage", "")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(gpt.config, architecture, tok, stage), f, indent=2)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    files = ["config.json", "model.safetensors"]
    if tok is not None:
        chat = stage not in ("pretrain", "")
        files += [os.path.basename(p) for p in write_hf_tokenizer(tok, out, chat, gpt.config.block_size)]
    else:
        print(f"[export-hf] no tokenizer.json next to {checkpoint}: the folder has the model only")
    return {"out": out, "architecture": architecture, "files": files, "stage": stage}


# ----------------------------------------------------------------------------------------------------
# the commands


def run_import(cfg) -> dict:
    """`minirlhf import-hf PATH [--out=DIR] [--tokenizer=auto|gpt2]`."""
    if not cfg.path:
        raise ValueError("import-hf needs the folder: minirlhf import-hf PATH [--out=DIR]")
    out = cfg.out or os.path.join("out", "hf", os.path.basename(os.path.normpath(cfg.path)))
    summary = import_hf(cfg.path, out, cfg.tokenizer)
    added = ", ".join(summary["added_tokens"]) or "none"
    print(f"[import-hf] {summary['kind']} {summary['n_layer']} layers x {summary['n_embd']} channels, context "
          f"{summary['block_size']}, vocabulary {summary['vocab_size']} (added: {added}) -> {summary['model']}")
    print(f"[import-hf] fine-tune it: minirlhf sft --preset=gpt2 --init={summary['model']} --sft-data=YOUR.jsonl "
          f"--eval_data=YOUR_EVAL.jsonl   (the gpt2 preset: fine-tuning settings for a GPT-2-sized model; "
          f"outputs in out/gpt2/)")
    return summary


def run_export(cfg) -> dict:
    """`minirlhf export-hf CHECKPOINT OUT`."""
    if not cfg.checkpoint or not cfg.out:
        raise ValueError("export-hf needs a checkpoint and a folder: minirlhf export-hf CHECKPOINT OUT")
    summary = export_hf(cfg.checkpoint, cfg.out)
    print(f"[export-hf] {summary['architecture']} -> {cfg.out} ({', '.join(summary['files'])})")
    return summary
