"""Hugging Face interop, checked against transformers' own numbers: a random GPT2LMHeadModel imports with
equal logits, our export loads in transformers with equal logits, import -> export -> import is exact,
a reward model's exported score equals ours with left and right padding, and a tokenizer read from
vocab.json + merges.txt encodes like transformers' GPT2Tokenizer built from the same files (files and
settings with which it would not are refused)."""

import json
import os
import random

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[test]')")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install -e '.[test]')")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install -e '.[test]')")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minirlhf import checkpoint as ck  # noqa: E402
from minirlhf import hf  # noqa: E402
from minirlhf.chat import render_conversation  # noqa: E402
from minirlhf.cli import main  # noqa: E402
from minirlhf.hf_bpe import bytes_to_unicode, ranks_to_hf_bpe  # noqa: E402
from minirlhf.model import GPT, ScalarModel  # noqa: E402
from minirlhf.tokenizer import (  # noqa: E402
    GPT2_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
    merges_to_ranks,
    train_bpe,
)

from conftest import english_like_documents  # noqa: E402
from hf_helpers import hf_logits, random_gpt2, write_merges  # noqa: E402

TEXT = "<|endoftext|>".join(english_like_documents(120))
N_MERGES = 40  # 256 bytes + 40 merges + <|endoftext|> = a 297-token vocabulary


def write_hf_tokenizer_files(folder, ranks, specials):
    """vocab.json + merges.txt as a Hugging Face GPT-2 folder holds them (no chat tokens)."""
    vocab, merges = ranks_to_hf_bpe(ranks, specials)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A saved random GPT-2 (model.safetensors) with a byte-level BPE that lacks our chat tokens."""
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model = random_gpt2()
    model.save_pretrained(folder)
    write_hf_tokenizer_files(folder, merges_to_ranks(train_bpe(TEXT, N_MERGES)), {"<|endoftext|>": 296})
    return folder, model


def test_import_gives_transformers_logits(hf_folder):
    folder, hf_model = hf_folder
    ids = torch.randint(0, 297, (3, 40), generator=torch.Generator().manual_seed(1))  # (B, T)
    ours = GPT.from_hf(str(folder))
    with torch.no_grad():
        ours_logits = ours(ids)  # (B, T, V)
    torch.testing.assert_close(ours_logits, hf_logits(hf_model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_hf_writes_our_checkpoint_with_chat_tokens(hf_folder, tmp_path, fmt):
    folder, hf_model = hf_folder
    if fmt == "bin":  # the older format: a pickled state dict with the tied lm_head and no "transformer." prefix
        src = tmp_path / "bin_folder"
        src.mkdir()
        for name in ("config.json", "vocab.json", "merges.txt"):
            (src / name).write_bytes((folder / name).read_bytes())
        sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
        torch.save(sd, src / "pytorch_model.bin")
        folder = src
    out = tmp_path / "imported"
    summary = hf.import_hf(str(folder), str(out))
    model, payload = ck.load_model(str(out / "model.pt"))
    tok = Tokenizer.load(str(out / "tokenizer.json"))
    assert summary["added_tokens"] == {"<|user|>": 297, "<|assistant|>": 298, "<|end|>": 299, "<|pad|>": 300}
    assert tok.n_vocab == model.config.vocab_size == 301 and tok.eot_id == 296
    assert payload["stage"] == "pretrain" and payload["hf_import"]["added_tokens"] == summary["added_tokens"]
    wte = model.transformer.wte.weight  # (301, C)
    torch.testing.assert_close(wte[297:], wte[:297].mean(0).expand(4, -1), atol=0, rtol=0)
    ids = torch.randint(0, 297, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(ids)  # (B, T, 301): the old vocabulary's columns are transformers' logits
    torch.testing.assert_close(logits[..., :297], hf_logits(hf_model, ids), atol=1e-5, rtol=0)


def test_export_loads_in_transformers_and_round_trip_is_exact(hf_folder, tmp_path):
    folder, _ = hf_folder
    first = tmp_path / "first"
    assert main(["import-hf", str(folder), f"--out={first}"]) == 0
    exported = tmp_path / "exported"
    assert main(["export-hf", str(first / "model.pt"), str(exported)]) == 0
    ours, _ = ck.load_model(str(first / "model.pt"))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(str(exported)).eval()
    ids = torch.randint(0, 301, (3, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(loaded, ids), atol=1e-5, rtol=0)
    # and with left padding, given the position ids we derive from the mask
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    with torch.no_grad():
        ours_padded = ours(ids, attention_mask=mask)
    hf_padded = hf_logits(loaded, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    torch.testing.assert_close(ours_padded[mask.bool()], hf_padded[mask.bool()], atol=1e-5, rtol=0)

    second = tmp_path / "second"
    hf.import_hf(str(exported), str(second))
    a, b = torch.load(first / "model.pt", weights_only=True), torch.load(second / "model.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and a["model_config"] == b["model_config"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["stage"] == "pretrain" and b["hf_import"]["added_tokens"] == {}  # the chat tokens travel along
    assert Tokenizer.load(str(second / "tokenizer.json")).special_tokens == \
        Tokenizer.load(str(first / "tokenizer.json")).special_tokens


def test_exported_tokenizer_and_chat_template_match_ours(hf_folder, tmp_path):
    pytest.importorskip("jinja2", reason="chat templates need jinja2")
    folder, _ = hf_folder
    hf.import_hf(str(folder), str(tmp_path / "imp"))
    hf.export_hf(str(tmp_path / "imp" / "model.pt"), str(tmp_path / "exp"))
    tok = Tokenizer.load(str(tmp_path / "imp" / "tokenizer.json"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "exp"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The kalo sees a mi?"},
                {"role": "assistant", "content": "Yes, it sees one."}]
    ids, _ = render_conversation(tok, messages)
    rendered = hf_tok.apply_chat_template(messages, tokenize=False)
    assert hf_tok(rendered, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.pad_token_id == tok.pad_id and hf_tok.eos_token_id == tok.eot_id  # a pretrain-stage model


def test_reward_model_export_scores_like_ours(hf_folder, tmp_path):
    folder, _ = hf_folder
    hf.import_hf(str(folder), str(tmp_path / "imp"))
    trunk, _ = ck.load_model(str(tmp_path / "imp" / "model.pt"))
    torch.manual_seed(4)
    rm = ScalarModel(trunk).eval()
    with torch.no_grad():
        rm.head.linear.bias.fill_(0.25)
        rm.head.gain.fill_(1.7)
        rm.head.offset.fill_(-0.3)
    rm_dir = tmp_path / "reward"
    rm_dir.mkdir()
    ck.save_checkpoint(str(rm_dir / "model.pt"), ck.model_payload(rm, "reward"))
    (rm_dir / "tokenizer.json").write_bytes((tmp_path / "imp" / "tokenizer.json").read_bytes())
    summary = hf.export_hf(str(rm_dir / "model.pt"), str(tmp_path / "rm_hf"))
    assert summary["architecture"] == "GPT2ForSequenceClassification"
    hf_rm = transformers.GPT2ForSequenceClassification.from_pretrained(str(tmp_path / "rm_hf")).eval()
    pad = Tokenizer.load(str(rm_dir / "tokenizer.json")).pad_id
    assert hf_rm.config.pad_token_id == pad and hf_rm.config.num_labels == 1

    gen = torch.Generator().manual_seed(5)
    lengths = [12, 20, 7, 16]
    T = max(lengths)
    for side in ("right", "left"):
        ids = torch.full((len(lengths), T), pad)  # (B, T)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            cols = slice(0, n) if side == "right" else slice(T - n, T)
            ids[i, cols] = torch.randint(0, 300, (n,), generator=gen)
            mask[i, cols] = 1
        with torch.no_grad():
            ours = rm.score(ids, mask)  # (B,)
            theirs = hf_rm(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 0]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the exported folder imports back as a reward model with the same scores
    back = hf.load_hf_model(str(tmp_path / "rm_hf"))
    assert isinstance(back, ScalarModel)
    with torch.no_grad():
        torch.testing.assert_close(back.score(ids, mask), rm.score(ids, mask), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# tokenizer files

ALPHABET = "kalomineratosuvidepoanelorisunThe  .,!?'-\n\t0123456789éü€😀"


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    """Our BPE, trained on text and written as vocab.json + merges.txt."""
    folder = tmp_path_factory.mktemp("bpe_trained")
    Tokenizer.train(TEXT, 256 + 120 + len(SPECIAL_TOKENS)).save_vocab_merges(folder)
    return folder


@pytest.fixture(scope="module")
def handwritten_files(tmp_path_factory):
    """Hand-written files in GPT-2's layout but with <|endoftext|> at id 0 and the bytes from id 1."""
    folder = tmp_path_factory.mktemp("bpe_hand")
    u = bytes_to_unicode()
    merges = [("Ġ", "k"), ("a", "l"), ("Ġk", "al"), ("o", "r"), ("Ġ", "T"), ("h", "e"), ("ĠT", "he"), ("e", "r"),
              ("i", "s"), ("Ġ", "is"), ("n", "e"), ("Ġ", "ne"), ("1", "2"), ("12", "3"), (".", "Ċ"), ("Ġ", "Ġ")]
    vocab = {"<|endoftext|>": 0, **{u[b]: 1 + i for i, b in enumerate(sorted(u))}}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


@pytest.mark.parametrize("via", ["vocab_merges", "tokenizer_json"])
@pytest.mark.parametrize("which", ["trained_files", "handwritten_files"])
def test_bpe_from_vocab_and_merges_encodes_like_transformers(which, via, request, tmp_path):
    folder = request.getfixturevalue(which)
    theirs = transformers.GPT2Tokenizer.from_pretrained(str(folder))  # reads vocab.json + merges.txt
    if via == "vocab_merges":
        ours = Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    else:  # the same tokenizer as transformers saves it (its tokenizer.json; vocab.json / merges.txt removed)
        theirs.save_pretrained(str(tmp_path / "saved"))
        for name in ("vocab.json", "merges.txt"):
            (tmp_path / "saved" / name).unlink(missing_ok=True)
        ours = hf.load_hf_tokenizer(str(tmp_path / "saved"))
    ours.save(tmp_path / "tok.json")  # our own format keeps the ids (a special token may sit at id 0)
    ours = Tokenizer.load(tmp_path / "tok.json")

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.text(alphabet=ALPHABET, max_size=80) | st.text(max_size=30))
    def check(text):
        # split_special_tokens: a control token's text typed in plain text ("<|endoftext|>", which Hypothesis
        # also draws from the constants in our source) is plain text to our encoder, by design (hf.py)
        expected = theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ours.encode(text) == expected, repr(text)

    check()
    text = "a <|endoftext|> b"  # the case above, always checked
    assert ours.encode(text) == theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    sample = " The kalo is 123.\nne  ne"
    assert ours.decode(ours.encode(sample)) == sample


def test_bad_tokenizer_files_are_clear_errors(tmp_path, handwritten_files):
    vocab = json.loads((handwritten_files / "vocab.json").read_text(encoding="utf-8"))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ k\nal\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:3: expected two tokens separated by one space"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_bytes("#version: 0.2\nĠ k\n".encode("utf-8") + b"a \xff\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"merges.txt:3: not UTF-8 text \('utf-8' codec can't decode byte 0xff"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("a l\nĠ k\n", encoding="utf-8")  # ids 258 then 257: out of order
    with pytest.raises(ValueError, match=r"merges.txt:2 \(Ġ k\): .*not above the previous merge's id"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    del vocab["a"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=r"no token for the single bytes \[97\]"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_token_no_merge_creates_is_refused_unless_declared_special(tmp_path):
    # "Ġthe" with its merges missing (a merges.txt cut short): transformers reads it as the bytes " the",
    # an ordinary token; it used to become a special token decoding to the literal "Ġthe"
    folder = write_merges(tmp_path / "files", [("a", "b")])  # ab = 256, <|endoftext|> = 257
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["Ġthe"] = 258
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    assert transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).decode([258]) == " the"
    with pytest.raises(ValueError, match=r"vocab.json: token 'Ġthe' \(id 258\) stands for the bytes b' the' but no "
                                         r"merge creates it .* not declared special"):
        Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    # declared as a special added token it is one; so is an entry with a character outside the byte alphabet
    # (a space), and <|endoftext|> (one of our control tokens) needs no declaration
    tok = Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt", {"Ġthe": 258})
    assert tok.special_tokens["Ġthe"] == 258 and tok.eot_id == 257 and tok.encode(" the") == [32, 116, 104, 101]
    del vocab["Ġthe"]
    vocab["<extra 0>"] = 258
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    assert tok.special_tokens["<extra 0>"] == 258 and tok.decode([258]) == "<extra 0>"


def test_merges_that_tiktoken_would_not_make_are_refused(tmp_path):
    # ids increase down the file, yet tiktoken, which merges any adjacent pair that forms a token, turns
    # "abc" into ab + c and then into the token abc; transformers merges only listed pairs and stops at ab c
    folder = write_merges(tmp_path / "files", [("a", "b"), ("b", "c"), ("a", "bc")])
    theirs = transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert theirs("abc", add_special_tokens=False)["input_ids"] == [256, ord("c")]
    ranks = {**{bytes([b]): b for b in range(256)}, b"ab": 256, b"bc": 257, b"abc": 258}
    assert Tokenizer("t", GPT2_SPLIT_PATTERN, ranks).encode("abc") == [258]
    with pytest.raises(ValueError, match=r"merges.txt:4 \(a bc\): tiktoken's BPE of 'abc' with the lower ids ends "
                                         r"at ab c, not at a bc"):
        Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    theirs.save_pretrained(str(tmp_path / "saved"))  # the same merges in transformers' tokenizer.json
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "saved" / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"tokenizer.json: model.merges\[2\] \(a bc\): tiktoken's BPE"):
        hf.load_hf_tokenizer(str(tmp_path / "saved"))


def test_random_merge_files_are_refused_or_encode_like_transformers(tmp_path):
    """Random merges over a, b, c with increasing ids: every file we accept encodes every probe like
    transformers (before the merge check, some were accepted and encoded differently)."""
    rng = random.Random(0)
    accepted = refused = 0
    for trial in range(150):
        merges, tokens = [], ["a", "b", "c"]
        for _ in range(rng.randint(2, 8)):
            left, right = rng.choice(tokens), rng.choice(tokens)
            if left + right not in tokens:
                merges.append((left, right))
                tokens.append(left + right)
        folder = write_merges(tmp_path / f"t{trial}", merges)
        try:
            ours = Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
        except ValueError as e:
            assert "tiktoken's BPE of" in str(e)
            refused += 1
            continue
        accepted += 1
        theirs = transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        for _ in range(30):
            text = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 14)))
            assert ours.encode(text) == theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"], \
                (merges, text)
    assert accepted >= 75 and refused >= 15  # both branches exercised


def test_hf_settings_that_change_the_encoding_are_refused(trained_files, tmp_path):
    ours = Tokenizer.from_vocab_merges(trained_files / "vocab.json", trained_files / "merges.txt")
    folder = tmp_path / "aps"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        os.symlink(trained_files / name, folder / name)
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert theirs("the", add_special_tokens=False)["input_ids"] == ours.encode(" the") != ours.encode("the")
    with pytest.raises(ValueError, match=r"tokenizer_config.json: key 'add_prefix_space' is true"):
        hf.load_hf_tokenizer(str(folder))
    config = {"added_tokens_decoder": {"400": {"content": "kalo", "special": False}}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"""tokenizer_config.json: added_tokens_decoder\['400'\] \('kalo'\) is """
                                         r'not "special": true'):
        hf.load_hf_tokenizer(str(folder))

    # the legacy added_tokens.json: transformers reads its tokens as non-special (found in plain text) ...
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}), encoding="utf-8")
    n = len(json.loads((trained_files / "vocab.json").read_text(encoding="utf-8")))
    (folder / "added_tokens.json").write_text(json.dumps({"<sep>": n}), encoding="utf-8")
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert n in theirs("a <sep> b", add_special_tokens=False)["input_ids"]  # an ordinary word to transformers
    with pytest.raises(ValueError, match=r"added_tokens.json: added token '<sep>' is not marked special"):
        hf.load_hf_tokenizer(str(folder))
    # ... unless another file marks them special, as transformers' save_pretrained does
    (folder / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["<sep>"]}),
                                                     encoding="utf-8")
    assert hf.load_hf_tokenizer(str(folder)).special_tokens["<sep>"] == n
    (folder / "added_tokens.json").unlink()
    (folder / "special_tokens_map.json").unlink()

    saved = tmp_path / "saved"  # transformers' own tokenizer.json (no normalizer, no prefix space) loads
    transformers.GPT2Tokenizer.from_pretrained(str(trained_files)).save_pretrained(str(saved))
    for name in ("vocab.json", "merges.txt"):
        (saved / name).unlink(missing_ok=True)
    sample = " The kalo is 123.\nne  ne"
    assert hf.load_hf_tokenizer(str(saved)).encode(sample) == ours.encode(sample)
    payload = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))
    changes = [(("normalizer",), {"type": "NFKC"}, r"key 'normalizer' is set \(type 'NFKC'\)"),
               (("pre_tokenizer", "add_prefix_space"), True, r"key 'pre_tokenizer.add_prefix_space' is true"),
               (("added_tokens", 0, "special"), False, r"added_tokens\[0\] \('<\|endoftext\|>'\) is not \"special\""),
               (("model", "dropout"), 0.5, r"key 'model.dropout' is 0.5; with BPE dropout transformers skips merges"),
               (("model", "continuing_subword_prefix"), "##", r"key 'model.continuing_subword_prefix' is '##'"),
               (("model", "end_of_word_suffix"), "</w>", r"key 'model.end_of_word_suffix' is '</w>'")]
    # dropout 1.0 skips every merge: transformers encodes byte by byte, where our encoder merges
    dropped = json.loads(json.dumps(payload))
    dropped["model"]["dropout"] = 1.0
    theirs = tokenizers.Tokenizer.from_str(json.dumps(dropped))
    assert theirs.encode(sample).ids == list(sample.encode("utf-8")) != ours.encode(sample)
    for keys, value, message in changes:
        changed = json.loads(json.dumps(payload))
        *parents, last = keys
        target = changed
        for key in parents:
            target = target[key]
        target[last] = value
        (saved / "tokenizer.json").write_text(json.dumps(changed), encoding="utf-8")
        with pytest.raises(ValueError, match="tokenizer.json: " + message):
            hf.load_hf_tokenizer(str(saved))


def saved_tokenizer_json(trained_files, folder):
    """transformers' own tokenizer.json of `trained_files` (vocab.json / merges.txt removed) and its payload."""
    transformers.GPT2Tokenizer.from_pretrained(str(trained_files)).save_pretrained(str(folder))
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def test_malformed_tokenizer_json_is_a_clear_error(trained_files, tmp_path):
    saved = tmp_path / "saved"
    payload = saved_tokenizer_json(trained_files, saved)
    ours = Tokenizer.from_vocab_merges(trained_files / "vocab.json", trained_files / "merges.txt")
    sample = " The kalo is 123.\nne  ne"
    # both spellings of a merge that transformers writes load alike: ["left", "right"] and "left right"
    pairs = [m if isinstance(m, list) else m.split(" ") for m in payload["model"]["merges"]]
    for merges in (pairs, [" ".join(m) for m in pairs]):
        payload["model"]["merges"] = merges
        (saved / "tokenizer.json").write_text(json.dumps(payload), encoding="utf-8")
        assert hf.load_hf_tokenizer(str(saved)).encode(sample) == ours.encode(sample)

    def model(key, value):
        return lambda p: p["model"].__setitem__(key, value)

    def merge(value):
        return lambda p: p["model"]["merges"].__setitem__(5, value)

    pair = r"expected two tokens, as \"left right\" \(one space\) or \[\"left\", \"right\"\]"
    cases = [(merge(["a", "b", "c"]), r"model.merges\[5\] = \['a', 'b', 'c'\]; " + pair),
             (merge(["ab"]), r"model.merges\[5\] = \['ab'\]; " + pair),
             (merge("a b c"), r"model.merges\[5\] = 'a b c'; " + pair),
             (merge("ab"), r"model.merges\[5\] = 'ab'; " + pair),
             (model("merges", "a b"), r"key 'model.merges' must be a list, got str"),
             (lambda p: p["model"]["vocab"].__setitem__("a", "97"), r"model.vocab\['a'\] = '97'; an id must be an int"),
             (lambda p: p["model"].pop("vocab"), r"key 'model.vocab' missing or not an object"),
             (lambda p: p.__setitem__("model", "BPE"), r"key 'model' must be an object, got 'BPE'"),
             (lambda p: p["added_tokens"][0].__setitem__("id", str(p["added_tokens"][0]["id"])),
              r"added_tokens\[0\] = \{.*\}; expected an object with a string 'content' and an int 'id' >= 0"),
             (lambda p: p["added_tokens"].append(dict(p["added_tokens"][0])),
              r"added_tokens\[\d+\] \('<\|endoftext\|>'\) repeats added_tokens\[0\]")]
    for change, message in cases:
        changed = json.loads(json.dumps(payload))
        change(changed)
        (saved / "tokenizer.json").write_text(json.dumps(changed), encoding="utf-8")
        with pytest.raises(ValueError, match="tokenizer.json: " + message):
            hf.load_hf_tokenizer(str(saved))
    for text, message in [("{bad", r"not a valid JSON file \(Expecting property name"),
                          ("[]", "expected one JSON object, got list")]:
        (saved / "tokenizer.json").write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="tokenizer.json: " + message):
            hf.load_hf_tokenizer(str(saved))


# ----------------------------------------------------------------------------------------------------
# bad checkpoints


def test_bad_folders_are_one_line_errors(hf_folder, tmp_path, capsys, monkeypatch):
    folder, _ = hf_folder
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_hf(str(tmp_path))
    config = json.loads((folder / "config.json").read_text())
    cases = [({"n_inner": 64}, "unsupported architecture: n_inner=64"),
             ({"activation_function": "relu"}, "activation_function='relu'"),
             ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
             ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true"),
             ({"model_type": "llama"}, "only GPT-2"),
             ({"n_embd": 48}, "has shape")]
    for i, (change, message) in enumerate(cases):
        bad = tmp_path / f"bad{i}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        os.symlink(folder / "model.safetensors", bad / "model.safetensors")
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            GPT.from_hf(str(bad))
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.symlink(folder / name, no_tok / name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files.*--tokenizer=gpt2"):
        hf.import_hf(str(no_tok), str(tmp_path / "x"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    with pytest.raises(RuntimeError, match="GPT-2 tokenizer files are not available locally"):
        hf.import_hf(str(no_tok), str(tmp_path / "x"), tokenizer="gpt2")
    assert main(["import-hf"]) == 1
    assert "import-hf needs the folder" in capsys.readouterr().err
    assert main(["export-hf", "a", "b", "c"]) == 2
    assert "unexpected argument 'c'" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "nowhere")]) == 1
    assert "not a folder" in capsys.readouterr().err
