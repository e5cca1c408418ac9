"""Hugging Face interop, rule by rule (minirlhf/hf.py): which config keys, tensors, architectures and tokenizer
settings import or are refused by name, and what an export writes (bias-free models, the chat template, the end
token of a chat model, a reward model's head). Each rule is checked against transformers or tokenizers reading the
same files, or against numbers worked out here. Small models and a 3-merge vocabulary keep it fast."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[test]')")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install -e '.[test]')")

from minirlhf import checkpoint as ck  # noqa: E402
from minirlhf import hf  # noqa: E402
from minirlhf.chat import render_conversation, render_prompt  # noqa: E402
from minirlhf.config import ModelConfig  # noqa: E402
from minirlhf.hf_bpe import bytes_to_unicode, ranks_to_hf_bpe  # noqa: E402
from minirlhf.model import GPT, ScalarModel  # noqa: E402
from minirlhf.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402

from hf_helpers import hf_logits, random_gpt2, write_merges  # noqa: E402

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]  # ids 256, 257, 258; <|endoftext|> = 259: 260 ids
V = 260
IDS = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T)


def folder_with(tmp_path, name, model=None, **config):
    """A folder as save_pretrained writes it (random_gpt2 unless `model`) with the 260-id vocab.json + merges.txt."""
    folder = write_merges(tmp_path / name, MERGES)
    model = model if model is not None else random_gpt2(vocab_size=V, **config)
    model.save_pretrained(folder)
    return folder, model


def our_logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


# ----------------------------------------------------------------------------------------------------
# config.json


def test_gpt2_spelled_differently_imports_with_transformers_logits(tmp_path):
    """n_inner = 4 * n_embd written out and 'gelu_pytorch_tanh' (GPT-2's GELU by another name) are GPT-2 itself."""
    for i, config in enumerate([{"n_inner": 4 * 32}, {"activation_function": "gelu_pytorch_tanh"}]):
        folder, model = folder_with(tmp_path, f"f{i}", **config)
        torch.testing.assert_close(our_logits(GPT.from_hf(str(folder))), hf_logits(model, IDS), atol=1e-5, rtol=0)


def test_config_keys_our_gpt_cannot_follow_are_refused_by_name(tmp_path):
    """scale_attn_weights=false, cross-attention, heads that do not divide n_embd, a missing n_head: ValueErrors
    naming the key; block_size is n_positions (the position table), n_ctx only when n_positions is absent."""
    base = {"model_type": "gpt2", "vocab_size": V, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}

    def read(change, drop=()):
        folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        raw = {k: v for k, v in {**base, **change}.items() if k not in drop}
        (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
        return hf.read_hf_config(str(folder))[0]

    assert read({"n_ctx": 1024}).block_size == 64
    assert read({"n_ctx": 48}, drop=("n_positions",)).block_size == 48
    cases = [({"scale_attn_weights": False}, {}, "unsupported architecture: scale_attn_weights=false"),
             ({"add_cross_attention": True}, {}, "unsupported architecture: add_cross_attention=true"),
             ({"n_head": 3}, {}, "unsupported architecture: n_embd=32 not divisible by n_head=3"),
             ({}, ("n_head",), "key 'n_head' missing or not an int")]
    for change, drop, message in cases:
        with pytest.raises(ValueError, match="config.json: " + message):
            read(change, drop)


# ----------------------------------------------------------------------------------------------------
# weight files


def test_old_bin_with_mask_buffers_and_sharded_safetensors_import_exactly(tmp_path):
    """pytorch_model.bin with GPT2Model's names and the old causal-mask buffers (attn.bias, attn.masked_bias),
    and a model.safetensors.index.json over several shards: transformers' logits both."""
    folder, model = folder_with(tmp_path, "src")
    old = write_merges(tmp_path / "old", MERGES)
    shutil.copyfile(folder / "config.json", old / "config.json")
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, old / "pytorch_model.bin")
    sharded = write_merges(tmp_path / "sharded", MERGES)
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert len(list(sharded.glob("model-*.safetensors"))) >= 3 and (sharded / "model.safetensors.index.json").exists()
    for source in (old, sharded):
        torch.testing.assert_close(our_logits(GPT.from_hf(str(source))), hf_logits(model, IDS), atol=1e-5, rtol=0)


def test_untied_or_extra_tensors_are_refused(tmp_path):
    """An lm_head that differs from wte (ours are tied) and a tensor plain GPT-2 lacks: errors naming them."""
    folder, model = folder_with(tmp_path, "src")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [("untied", {"lm_head.weight": state["lm_head.weight"] + 1.0}, "lm_head.weight differs from transformer.wte"),
             ("extra", {"transformer.h.0.adapter.weight": torch.zeros(2)},
              r"unexpected tensors \['transformer.h.0.adapter.weight'\]")]
    for name, change, message in cases:
        bad = tmp_path / name
        bad.mkdir()
        shutil.copyfile(folder / "config.json", bad / "config.json")
        safetensors_torch.save_file({**state, **change}, str(bad / "model.safetensors"))
        with pytest.raises(ValueError, match=message):
            GPT.from_hf(str(bad))


def test_gpt2model_is_a_language_model_and_a_classifier_needs_one_label(tmp_path):
    """A bare GPT2Model folder is a language model (logits = last hidden state @ wte.T); GPT.from_hf refuses a
    sequence classifier; a classifier with two labels is no reward model."""
    model = random_gpt2(vocab_size=V)
    folder, _ = folder_with(tmp_path, "trunk", model=model.transformer)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["GPT2Model"]
    ours = hf.load_hf_model(str(folder))
    with torch.no_grad():
        expected = model.transformer(IDS).last_hidden_state @ model.transformer.wte.weight.T  # (B, T, V)
    assert isinstance(ours, GPT)
    torch.testing.assert_close(our_logits(ours), expected, atol=1e-5, rtol=0)

    for labels in (1, 2):
        config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=V, n_positions=64,
                                         num_labels=labels, pad_token_id=V - 1, bos_token_id=V - 1, eos_token_id=V - 1)
        folder, _ = folder_with(tmp_path, f"cls{labels}", model=transformers.GPT2ForSequenceClassification(config))
        if labels == 1:
            assert isinstance(hf.load_hf_model(str(folder)), ScalarModel)
            with pytest.raises(ValueError, match="holds a sequence-classification"):
                GPT.from_hf(str(folder))
        else:
            with pytest.raises(ValueError, match=r"score.weight of shape \(1, 32\) \(num_labels = 1\)"):
                hf.load_hf_model(str(folder))


# ----------------------------------------------------------------------------------------------------
# tokenizer files


def test_added_tokens_are_special_only_where_a_file_marks_them(tmp_path):
    """An added_tokens_decoder entry without "special" (transformers' default: not special) is refused; a legacy
    added_tokens.json token is special when special_tokens_map.json or tokenizer_config.json names it as a *_token
    (a string or {"content": ...})."""
    folder = write_merges(tmp_path / "tok", MERGES)
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({"added_tokens_decoder": {"260": {"content": "<sep>"}}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"""added_tokens_decoder\['260'\] \('<sep>'\) is not "special": true"""):
        hf.load_hf_tokenizer(str(folder))
    config.unlink()
    (folder / "added_tokens.json").write_text(json.dumps({"<sep>": V}), encoding="utf-8")
    with pytest.raises(ValueError, match="added token '<sep>' is not marked special"):
        hf.load_hf_tokenizer(str(folder))
    markings = [("special_tokens_map.json", {"pad_token": "<sep>"}),
                ("special_tokens_map.json", {"sep_token": {"content": "<sep>", "special": True}}),
                ("tokenizer_config.json", {"pad_token": "<sep>"})]
    for name, marks in markings:
        (folder / name).write_text(json.dumps(marks), encoding="utf-8")
        tok = hf.load_hf_tokenizer(str(folder))
        assert tok.special_tokens["<sep>"] == V and tok.user_id == V + 1, (name, marks)
        (folder / name).unlink()


@pytest.mark.parametrize("name, text, message", [
    ("tokenizer_config.json", "{not json", r"tokenizer_config.json: not a valid JSON file"),
    ("special_tokens_map.json", "[1, 2]", r"special_tokens_map.json: expected one JSON object, got list"),
    ("added_tokens.json", '{"<sep>": "260"}', r"added_tokens.json: \['<sep>'\] = '260'; an id must be an int >= 0"),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"260": {"special": true}}}',
     r"tokenizer_config.json: added_tokens_decoder\['260'\] = \{'special': True\}; expected an id >= 0 mapped to an "
     r"object with a string 'content'"),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"x": {"content": "<sep>", "special": true}}}',
     r"added_tokens_decoder\['x'\] = .*expected an id >= 0"),
    ("tokenizer_config.json", '{"added_tokens_decoder": ["<sep>"]}',
     r"key 'added_tokens_decoder' must be an object mapping ids to tokens, got list"),
])
def test_malformed_tokenizer_side_files_are_one_line_errors(tmp_path, name, text, message):
    """Bad JSON, or an entry of the wrong shape, in the files beside vocab.json is a ValueError naming the file and
    the entry, not a bare JSONDecodeError / KeyError / AttributeError from inside the reader."""
    folder = write_merges(tmp_path / "tok", MERGES)
    (folder / name).write_text(text, encoding="utf-8")
    if name == "special_tokens_map.json":  # read only to decide whether a legacy added token is special
        (folder / "added_tokens.json").write_text(json.dumps({"<sep>": V}), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        hf.load_hf_tokenizer(str(folder))


def test_malformed_config_and_shard_index_are_one_line_errors(tmp_path):
    """A config.json that is not one object, and a sharded index without a weight_map, are errors naming the file."""
    folder, _ = folder_with(tmp_path, "m")
    (folder / "config.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"config.json: expected one JSON object, got list"):
        hf.read_hf_config(str(folder))
    index = tmp_path / "sharded"
    index.mkdir()
    (index / "model.safetensors.index.json").write_text('{"metadata": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: key 'weight_map' missing or not an object"):
        hf.read_hf_weights(str(index))


def tokenizer_json(added=(), **pre):
    """A GPT-2-style tokenizer.json over the 260-id vocabulary (tokenizers' own format), `added` extra tokens."""
    u = bytes_to_unicode()
    vocab = {u[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    added_tokens = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for s, i in [("<|endoftext|>", V - 1), *added]]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True, **pre},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [list(m) for m in MERGES]}}


def test_tokenizer_json_added_tokens_keep_their_ids_and_other_models_are_refused(tmp_path):
    """A tokenizer.json's added tokens keep their ids (chat tokens after them) and encode like tokenizers; a
    WordPiece model or use_regex false is refused; a pre_tokenizer without use_regex (default true) loads."""
    folder = tmp_path / "tj"
    folder.mkdir()
    path = folder / "tokenizer.json"
    payload = tokenizer_json(added=[("<sep>", V)])
    path.write_text(json.dumps(payload), encoding="utf-8")
    tok = hf.load_hf_tokenizer(str(folder))
    assert tok.special_tokens["<sep>"] == V and [tok.user_id, tok.assistant_id, tok.end_id, tok.pad_id] == \
        [V + 1, V + 2, V + 3, V + 4]
    text = " the then, the\ttheme"
    assert tok.encode(text) == tokenizers.Tokenizer.from_str(json.dumps(payload)).encode(text).ids
    del payload["pre_tokenizer"]["use_regex"]
    path.write_text(json.dumps(payload), encoding="utf-8")
    assert hf.load_hf_tokenizer(str(folder)).encode(text) == tok.encode(text)
    for change in ({"pre_tokenizer": {"type": "ByteLevel", "use_regex": False}},
                   {"model": {**payload["model"], "type": "WordPiece"}}):
        path.write_text(json.dumps({**payload, **change}), encoding="utf-8")
        with pytest.raises(ValueError, match="not a GPT-2-style byte-level BPE"):
            hf.load_hf_tokenizer(str(folder))


def test_our_own_tokenizer_json_in_a_folder_loads_as_is(tmp_path):
    """A folder holding minirlhf's own tokenizer.json (no vocab.json / merges.txt) gives that tokenizer back."""
    tok = Tokenizer.from_vocab_merges(*(write_merges(tmp_path / "files", MERGES) / n for n in ("vocab.json",
                                                                                                "merges.txt")))
    folder = tmp_path / "ours"
    tok.save(folder / "tokenizer.json")
    loaded = hf.load_hf_tokenizer(str(folder))
    assert loaded.name == tok.name and loaded.special_tokens == tok.special_tokens
    assert loaded.mergeable_ranks == tok.mergeable_ranks


def test_merges_file_line_rules_match_transformers(tmp_path):
    """merges.txt with CRLF line ends, and a merge line that starts with "#version" after line 1 (only line 1 is
    the header): read as transformers' GPT2Tokenizer reads them (same ids); a merge given twice names both lines."""
    chain = [("#", "v"), ("e", "r"), ("#v", "er"), ("s", "i"), ("o", "n"), ("si", "on"), ("#ver", "sion"),
             ("#version", "s")]
    folder = write_merges(tmp_path / "files", chain)
    merges = folder / "merges.txt"
    assert merges.read_text(encoding="utf-8").splitlines()[8] == "#version s"
    theirs = transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(merges))
    text = "#versions: a version\r\nsion er"  # (the pre-tokenizer keeps "#" apart from letters)
    expected = theirs(text, add_special_tokens=False)["input_ids"]
    assert 256 + len(chain) - 3 in expected  # "sion"
    ours = Tokenizer.from_vocab_merges(folder / "vocab.json", merges)  # "#versions": a merged token, not special
    assert ours.encode(text) == expected and ours.mergeable_ranks[b"#versions"] == 256 + len(chain) - 1
    merges.write_bytes(merges.read_bytes().replace(b"\n", b"\r\n"))
    assert transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(merges))(text, add_special_tokens=False)[
        "input_ids"] == expected
    assert Tokenizer.from_vocab_merges(folder / "vocab.json", merges).encode(text) == expected
    merges.write_text("#version: 0.2\na b\nc d\na b\n", encoding="utf-8")
    vocab = {**json.loads((folder / "vocab.json").read_text(encoding="utf-8")), "ab": 300, "cd": 301}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:4 \(a b\): creates 'ab', which .*merges.txt:2 already creates"):
        Tokenizer.from_vocab_merges(folder / "vocab.json", merges)


def test_ranks_without_a_merges_txt_equivalent_are_refused():
    """ranks_to_hf_bpe: a token that is not one merge of two lower-ranked tokens, or a special token spelled like
    an ordinary token, has no faithful vocab.json + merges.txt: a ValueError, not a file transformers misreads."""
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match=r"token b'abc' \(id 256\) is not one merge of two lower-ranked tokens"):
        ranks_to_hf_bpe({**ranks, b"abc": 256}, {})
    vocab, merges = ranks_to_hf_bpe({**ranks, b"ab": 256, b"abc": 257}, {"<|endoftext|>": 258})
    assert merges == [("a", "b"), ("ab", "c")] and vocab["abc"] == 257 and vocab["<|endoftext|>"] == 258
    with pytest.raises(ValueError, match="special token 'a' has the same text as an ordinary BPE token"):
        ranks_to_hf_bpe(ranks, {"a": 256})


# ----------------------------------------------------------------------------------------------------
# import


def test_import_refuses_a_padded_vocabulary_and_keeps_existing_chat_tokens(tmp_path):
    """Embedding rows the tokenizer never produces are refused; a folder whose tokenizer already has the chat
    tokens imports unchanged (no rows added) as stage 'hf-import', not 'pretrain' (whose chat rows SFT re-initialises)."""
    padded, _ = folder_with(tmp_path, "padded", model=random_gpt2(vocab_size=V + 10))
    with pytest.raises(ValueError, match=f"do not match the model's {V + 10} embedding rows"):
        hf.import_hf(str(padded), str(tmp_path / "out_padded"))
    folder, model = folder_with(tmp_path, "chat", model=random_gpt2(vocab_size=V + 4))
    decoder = {str(V + k): {"content": s, "special": True} for k, s in enumerate(SPECIAL_TOKENS[1:])}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}), encoding="utf-8")
    summary = hf.import_hf(str(folder), str(tmp_path / "out_chat"))
    ours, payload = ck.load_model(str(tmp_path / "out_chat" / "model.pt"))
    assert summary["added_tokens"] == {} and summary["stage"] == payload["stage"] == "hf-import"
    assert payload["hf_import"]["new_rows_init"] is None
    assert torch.equal(ours.transformer.wte.weight, model.transformer.wte.weight)


# ----------------------------------------------------------------------------------------------------
# export


def our_tokenizer(tmp_path) -> Tokenizer:
    """The 260-id BPE plus our four chat tokens: 264 ids."""
    folder = write_merges(tmp_path / "bpe", MERGES)
    return Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")


def save_ours(folder, model, stage, tok=None):
    """model.pt (+ tokenizer.json when `tok`) as a stage writes them; the model.pt path."""
    folder.mkdir(parents=True, exist_ok=True)
    ck.save_checkpoint(str(folder / "model.pt"), ck.model_payload(model, stage))
    if tok is not None:
        tok.save(folder / "tokenizer.json")
    return str(folder / "model.pt")


def random_ours(seed=0, **config):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": V + 4,
                               "bias": True, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def test_bias_free_model_exports_with_zero_biases_and_imports_back(tmp_path):
    """A bias=False GPT exports as GPT-2 with zero biases: transformers' logits are ours, and the folder imports
    back (no lm_head.bias or other stray tensor) with the same logits."""
    tok = our_tokenizer(tmp_path)
    model = random_ours(bias=False)
    hf.export_hf(save_ours(tmp_path / "m", model, "sft", tok), str(tmp_path / "exp"))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "exp")).eval()
    ids = torch.randint(0, V + 4, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hf_logits(loaded, ids), our_logits(model, ids), atol=1e-5, rtol=0)
    assert all(torch.count_nonzero(p) == 0 for k, p in loaded.state_dict().items() if k.endswith(".bias"))
    torch.testing.assert_close(our_logits(hf.load_hf_model(str(tmp_path / "exp")), ids), our_logits(model, ids),
                               atol=1e-5, rtol=0)


def test_chat_model_export_ends_turns_with_end_and_the_template_prompts_like_ours(tmp_path):
    """An SFT-stage export: eos is <|end|> (config and tokenizer), model_max_length the context, and the chat
    template renders multi-turn conversations (the system text only in the first user turn) and generation
    prompts exactly as render_conversation / render_prompt."""
    pytest.importorskip("jinja2", reason="chat templates need jinja2")
    tok = our_tokenizer(tmp_path)
    hf.export_hf(save_ours(tmp_path / "m", random_ours(), "sft", tok), str(tmp_path / "exp"))
    config = transformers.GPT2Config.from_pretrained(str(tmp_path / "exp"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "exp"))
    assert config.eos_token_id == hf_tok.eos_token_id == tok.end_id and config.pad_token_id == tok.pad_id
    assert hf_tok.model_max_length == 64
    messages = [{"role": "system", "content": "the"}, {"role": "user", "content": "then the"},
                {"role": "assistant", "content": "the theme"}, {"role": "user", "content": "the end"}]

    def hf_ids(msgs, **kw):
        return hf_tok(hf_tok.apply_chat_template(msgs, tokenize=False, **kw), add_special_tokens=False)["input_ids"]

    assert hf_ids(messages, add_generation_prompt=True) == render_prompt(tok, messages)
    reply = {"role": "assistant", "content": "then"}
    assert hf_ids([*messages, reply]) == render_conversation(tok, [*messages, reply])[0]


def test_exports_that_cannot_be_faithful_are_refused(tmp_path):
    """A tokenizer with more ids than embedding rows, a reward model without tokenizer.json (no pad id for
    transformers' last-token read), a reward head of all zeros: each a clear error, no folder that misleads."""
    tok = our_tokenizer(tmp_path)
    small = save_ours(tmp_path / "small", random_ours(vocab_size=V + 2), "sft", tok)
    with pytest.raises(ValueError, match=f"has {V + 4} ids but the model only {V + 2} rows"):
        hf.export_hf(small, str(tmp_path / "e1"))
    rm = ScalarModel(random_ours()).eval()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json next to .*needs the pad token id"):
        hf.export_hf(save_ours(tmp_path / "rm", rm, "reward"), str(tmp_path / "e2"))
    with torch.no_grad():
        rm.head.linear.weight.zero_()
    with pytest.raises(ValueError, match="head weight is all zeros"):
        hf.export_hf(save_ours(tmp_path / "rm0", rm, "reward", tok), str(tmp_path / "e3"))
