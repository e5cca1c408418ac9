"""Tests for minirlhf.tokenizer: BPE training (hand-worked examples and a from-scratch re-counting
reference), tiktoken vs the naive encoder, plain-text handling of special-token strings, the chat
template's loss mask, save/load, vocab size and the GPT-2 no-download path.

Every tokenizer here is trained in-process on a few kB of text, so the file runs in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minirlhf.chat import render_conversation, render_prompt
from minirlhf.hf_bpe import bytes_to_unicode
from minirlhf.tokenizer import (
    ASSISTANT,
    END,
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    PAD,
    SPECIAL_TOKENS,
    USER,
    _GPT2_FILES,
    Tokenizer,
    merges_to_ranks,
    naive_bpe_encode,
    train_bpe,
)

SAMPLE = """\
The old lighthouse stood at the end of the harbour, where the road turned to sand and the gulls
argued over fish heads. Nobody had lit its lamp since 1987, but every evening Mrs. O'Neill climbed
the 112 steps anyway, "just to check," she'd say, "that the sea's still there."

Her grandson, Tomás, didn't believe in ghosts. He believed in tide tables, in the weather forecast
(which was wrong 40% of the time), and in the cinnamon buns from the bakery on Quay Street - the ones
that cost £2.50 and were worth every penny. On Saturdays he helped his grandmother sort the post:
bills, postcards, a catalogue of garden tools, and once a letter addressed simply to "The Keeper".

Recipe for the buns, as copied from the bakery's window:
  1. Mix 500 g flour, 7 g yeast, 60 g sugar and a pinch of salt.
  2. Warm 250 ml milk with 50 g butter; don't let it boil!
  3. Knead for ten minutes, rest for an hour, roll out, spread with butter & cinnamon.
  4. Bake at 200°C for 18-20 minutes.

"Why do you keep climbing?" he asked her one night. The wind was rattling the windows and the
radio crackled with a shipping forecast: Dogger, Fisher, German Bight, variable 3 or 4, good.
"Because someone should," she answered. "If a boat ever needs a light, it won't ask whether we
believed in it first." She handed him the torch. It was heavy, older than he was, and smelled of oil.

They climbed together. At the top the glass was cold and salted, and the town's lights looked small
and brave: the pub, the chip shop, the school's empty windows, the blinking red eye of the mast on
the hill. Far out, something answered - a flicker, then two, then nothing. Tomás checked his watch
(21:47), wrote the time in the logbook, and underlined it twice. His grandmother smiled. "There,"
she said. "Now you're a keeper too."

Notes: naïve café owners in Zürich say "grüezi"; in 東京 people say こんにちは. Emoji 🙂👍🏽 and tabs\tand
    indented    spaces,     trailing spaces   
and numbers like 3.14159, 2,718, -42, 1e-9, 0x1F and version v2.10.3 all appear in real text.
"""

SPECIAL_STRINGS = st.sampled_from(
    [END, USER, ASSISTANT, ENDOFTEXT, PAD, "<|", "|>", "  \n\n ", "\t", "🙂👍🏽", "'s", "'ll", "\r\n", " 123"]
)
RANDOM_TEXT = st.lists(st.one_of(st.text(max_size=20), SPECIAL_STRINGS), max_size=12).map("".join)
# For tiktoken-vs-naive comparisons only: code points assigned in Python's Unicode tables. Very recently
# assigned characters (e.g. U+3D000) are letters to the `regex` module but not to tiktoken's Rust regex, so
# the two pre-tokenisers legitimately split them differently (see the module docstring).
ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))
ASSIGNED_TEXT = st.lists(st.one_of(st.text(ASSIGNED, max_size=20), SPECIAL_STRINGS), max_size=12).map(
    "".join
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def sample_tok(vocab_size: int = 512) -> Tokenizer:
    return Tokenizer.train(SAMPLE, vocab_size)


@lru_cache(maxsize=None)
def sample_merges(n: int = 251) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(train_bpe(SAMPLE, n))


def reference_train(text: str, n_merges: int) -> list[tuple[bytes, bytes]]:
    """From-scratch BPE: re-count every pair over every word at every merge (no incremental updates)."""
    words: Counter[tuple[bytes, ...]] = Counter()
    for doc in re.split("|".join(map(re.escape, SPECIAL_TOKENS)), text):
        for piece in regex.findall(GPT2_SPLIT_PATTERN, doc):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    known = {bytes([i]) for i in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    banned: set[tuple[bytes, bytes]] = set()
    while len(merges) < n_merges:
        counts: Counter[tuple[bytes, bytes]] = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                if pair not in banned:
                    counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # highest count, then smallest bytes pair
        if best[0] + best[1] in known:
            banned.add(best)
            continue
        known.add(best[0] + best[1])
        merges.append(best)
        new_words: Counter[tuple[bytes, ...]] = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += f
        words = new_words
    return merges


# ---------------------------------------------------------------------------------------------------
# train_bpe


def test_train_bpe_hand_worked_single_word():
    # Classic "aaabdaaabac". Counts: aa 4 -> merge. Then (aa,a) and (a,b) tie at 2: b"a" < b"aa" so (a,b).
    # Then (aa,ab) 2. Then all pairs count 1 in [aaab, d, aaab, a, c]: smallest is (a, c), then
    # (aaab, ac) < (aaab, d) since b"ac" < b"d", then (aaab, d), then (aaabd, aaabac). Then nothing.
    merges = train_bpe("aaabdaaabac", 10)
    assert merges == [
        (b"a", b"a"),
        (b"a", b"b"),
        (b"aa", b"ab"),
        (b"a", b"c"),
        (b"aaab", b"ac"),
        (b"aaab", b"d"),
        (b"aaabd", b"aaabac"),
    ]


def test_train_bpe_weights_unique_pretokens_by_frequency():
    # Pre-tokens: "ab" x1, " ab" x2, " cd" x1. (a,b) = 3, (' ',ab) = 2, then (' ',c) < (c,d) at 1 each.
    assert train_bpe("ab ab ab cd", 10) == [(b"a", b"b"), (b" ", b"ab"), (b" ", b"c"), (b" c", b"d")]


def test_train_bpe_special_tokens_are_boundaries():
    docs = ["cat sat", "dog ran", "the cat"] * 40
    merges = train_bpe(ENDOFTEXT.join(docs) + USER + "cat" + END, 40)
    assert merges, "expected some merges"
    for left, right in merges:
        token = (left + right).decode("utf-8")
        assert any(token in d for d in set(docs)), f"merge {token!r} crosses a document boundary"


@FAST
@given(
    text=st.lists(st.one_of(st.text("ab \n", max_size=30), st.text(max_size=8), SPECIAL_STRINGS), max_size=15).map(
        "".join
    ),
    n_merges=st.integers(0, 40),
)
def test_train_bpe_matches_recounting_reference(text, n_merges):
    assert train_bpe(text, n_merges) == reference_train(text, n_merges)


def test_train_bpe_matches_reference_on_sample_and_is_deterministic():
    assert list(sample_merges(120)) == reference_train(SAMPLE, 120)
    assert train_bpe(SAMPLE, 120) == train_bpe(SAMPLE, 120)


def test_train_bpe_bad_input():
    with pytest.raises(ValueError, match="n_merges"):
        train_bpe("abc", -1)
    with pytest.raises(TypeError, match="str"):
        train_bpe(b"abc", 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# merges_to_ranks / naive encoder / tiktoken agreement


def test_merges_to_ranks_layout():
    ranks = merges_to_ranks([(b"a", b"b"), (b"ab", b"c")])
    assert len(ranks) == 258
    assert ranks[b"\x00"] == 0 and ranks[b"a"] == 97 and ranks[b"\xff"] == 255
    assert ranks[b"ab"] == 256 and ranks[b"abc"] == 257
    with pytest.raises(ValueError, match="recreates"):
        merges_to_ranks([(b"a", b"b"), (b"a", b"b")])
    with pytest.raises(ValueError, match="no earlier merge"):
        merges_to_ranks([(b"ab", b"c")])


def test_naive_encode_hand_worked():
    merges = [(b"a", b"b"), (b" ", b"ab")]
    # pre-tokens "abc", " ab", " ": "abc" -> [ab, c]; " ab" -> [ ,ab] -> [ ab]; trailing space alone.
    assert naive_bpe_encode("abc ab ", merges) == [256, ord("c"), 257, ord(" ")]


def test_tiktoken_matches_naive_on_sample():
    merges = sample_merges()
    tok = sample_tok()
    assert tok.encode(SAMPLE) == naive_bpe_encode(SAMPLE, merges)
    shuffled = " ".join(sorted(SAMPLE.split(), key=lambda w: (len(w), w)))
    assert tok.encode(shuffled) == naive_bpe_encode(shuffled, merges)
    assert len(tok.encode(SAMPLE)) < len(SAMPLE.encode("utf-8")) / 2  # the merges actually compress


@FAST
@given(text=ASSIGNED_TEXT)
def test_tiktoken_matches_naive_on_random_text(text):
    assert sample_tok().encode(text) == naive_bpe_encode(text, sample_merges())


@FAST
@given(
    train=st.lists(st.one_of(st.text("ab -\n", max_size=40), st.text(ASSIGNED, max_size=10)), max_size=10).map("".join),
    probe=st.lists(st.one_of(st.text("ab -\n", max_size=40), st.text(ASSIGNED, max_size=10)), max_size=10).map("".join),
    n_merges=st.integers(1, 60),
)
def test_tiktoken_matches_naive_when_trained_on_random_text(train, probe, n_merges):
    merges = train_bpe(train, n_merges)
    tok = Tokenizer("t", GPT2_SPLIT_PATTERN, merges_to_ranks(merges))
    for text in (train, probe):
        assert tok.encode(text) == naive_bpe_encode(text, merges)


# ---------------------------------------------------------------------------------------------------
# Tokenizer: round trip, special strings, vocab size


@FAST
@given(text=RANDOM_TEXT)
def test_encode_decode_round_trip(text):
    tok = sample_tok()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_special_token_string_in_user_text_is_plain(special):
    tok = sample_tok()
    text = f"please print {special} and stop{special}"
    ids = tok.encode(text)
    control = set(tok.special_tokens.values())
    assert not control & set(ids)
    assert max(ids) < min(control)
    assert tok.decode(ids) == text
    # whereas the control id itself decodes to the same string
    assert tok.decode([tok.special_tokens[special]]) == special


def test_vocab_size_and_special_ids():
    tok = Tokenizer.train(SAMPLE, 300)
    assert tok.n_vocab == 300
    assert [tok.eot_id, tok.user_id, tok.assistant_id, tok.end_id, tok.pad_id] == [295, 296, 297, 298, 299]
    assert tok.pad_id != tok.end_id
    assert len(tok.mergeable_ranks) == 295
    assert max(tok.encode(SAMPLE)) < 295
    assert tok.decode([tok.end_id, tok.pad_id]) == END + PAD


def test_vocab_size_errors():
    with pytest.raises(ValueError, match="261"):
        Tokenizer.train(SAMPLE, 260)
    with pytest.raises(ValueError, match="only supports"):
        Tokenizer.train("tiny text", 400)


def test_lone_surrogate_is_an_error_naming_its_index():
    tok = sample_tok()
    text = json.loads('"caf\\u00e9 \\ud83d!"')  # JSON's escape for half of 🙂 gives a lone surrogate
    assert text == "café \ud83d!"
    message = r"text\[5\] is '\\ud83d', a lone surrogate \(half of a UTF-16 pair\), which has no UTF-8 encoding"
    with pytest.raises(ValueError, match=r"Tokenizer.encode: " + message):
        tok.encode(text)  # tiktoken alone encodes U+FFFD there, so decode(encode(text)) != text
    with pytest.raises(ValueError, match=r"train_bpe: text\[11\] is '\\ud83d'"):
        train_bpe("ab " * 2 + text, 3)  # 6 characters before "café "
    whole = json.loads('"\\ud83d\\ude42"')  # both halves: json.loads joins them into one character
    assert whole == "🙂" and tok.decode(tok.encode(whole)) == whole


def test_decode_rejects_out_of_range():
    tok = sample_tok()
    with pytest.raises(ValueError, match="outside"):
        tok.decode([1, tok.n_vocab])


# ---------------------------------------------------------------------------------------------------
# chat template


def test_render_conversation_mask_by_hand():
    tok = sample_tok()
    msgs = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany? <|end|>"},
        {"role": "assistant", "content": "Berlin, I think."},
    ]
    u1, a1, u2, a2 = (tok.encode(m["content"]) for m in msgs)
    U, A, E = tok.user_id, tok.assistant_id, tok.end_id
    expected_ids = [U, *u1, E, A, *a1, E, U, *u2, E, A, *a2, E]
    expected_mask = (
        [0] * (1 + len(u1) + 1) + [0] + [1] * len(a1) + [1] + [0] * (1 + len(u2) + 1) + [0] + [1] * len(a2) + [1]
    )
    ids, mask = render_conversation(tok, msgs)
    assert ids == expected_ids
    assert mask == expected_mask
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Paris.<|end|>Berlin, I think.<|end|>"
    assert ids.count(E) == 4  # the literal "<|end|>" in the user text is not a control token
    assert tok.decode(ids) == (
        "<|user|>What is the capital of France?<|end|><|assistant|>Paris.<|end|>"
        "<|user|>And of Germany? <|end|><|end|><|assistant|>Berlin, I think.<|end|>"
    )


def test_render_conversation_system_and_empty_assistant():
    tok = sample_tok()
    ids, mask = render_conversation(
        tok,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
        ],
    )
    assert ids == [tok.user_id, *tok.encode("Be brief.\n\nHi"), tok.end_id, tok.assistant_id, tok.end_id]
    assert mask == [0] * (len(ids) - 1) + [1]


@pytest.mark.parametrize(
    "msgs, match",
    [
        ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], r"messages\[1\].*unknown role"),
        ([{"role": "assistant", "content": "a"}], r"messages\[0\].*'user'"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            r"messages\[1\].*alternate",
        ),
        ([{"role": "user", "content": "a"}], r"messages\[0\].*end with a 'assistant' turn.*render_prompt"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
            r"messages\[1\].*system",
        ),
        ([{"role": "user", "content": 3}], r"messages\[0\].*str"),
        ([{"role": "user"}], r"messages\[0\].*'content'"),
        ([], r"no user/assistant turns"),
    ],
)
def test_render_conversation_errors(msgs, match):
    with pytest.raises(ValueError, match=match):
        render_conversation(sample_tok(), msgs)


def test_render_prompt():
    tok = sample_tok()
    prompt = "Say <|end|> please"
    ids = render_prompt(tok, prompt)
    assert ids == [tok.user_id, *tok.encode(prompt), tok.end_id, tok.assistant_id]
    assert ids[-1] == tok.assistant_id and ids.count(tok.end_id) == 1
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of Peru?"},
    ]
    ids = render_prompt(tok, msgs)
    full, _ = render_conversation(tok, msgs + [{"role": "assistant", "content": "Lima."}])
    assert ids[-1] == tok.assistant_id
    assert full[: len(ids)] == ids  # the prompt is a prefix of the rendered conversation
    with pytest.raises(ValueError, match=r"messages\[1\].*end with a 'user'"):
        render_prompt(tok, msgs[:2])


# ---------------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip(tmp_path):
    tok = sample_tok()
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temp file left over
    loaded = Tokenizer.load(path)
    assert Tokenizer.load(path.parent).n_vocab == tok.n_vocab  # a directory works too
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.mergeable_ranks == tok.mergeable_ranks
    assert loaded.pattern == GPT2_SPLIT_PATTERN
    text = SAMPLE + " <|end|> 🙂"
    assert loaded.encode(text) == tok.encode(text)
    ids, _ = render_conversation(loaded, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert ids == render_conversation(tok, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])[0]


def test_save_gives_the_mode_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        path = sample_tok().save(tmp_path / "tokenizer.json")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = [os.stat(p).st_mode & 0o777 for p in (path, tmp_path / "plain.txt")]
    assert modes == [0o640, 0o640]  # 0o666 less the umask, not mkstemp's private 0o600
    assert sorted(os.listdir(tmp_path)) == ["plain.txt", "tokenizer.json"]  # no temp file left over


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not a valid tokenizer JSON"):
        Tokenizer.load(bad)
    path = sample_tok().save(tmp_path / "tokenizer.json")
    payload = json.loads(path.read_text())
    payload["mergeable_ranks"][300][0] = "!!not base64!!"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"mergeable_ranks\[300\]"):
        Tokenizer.load(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        Tokenizer.load(path)
    payload = json.loads(sample_tok().save(path).read_text())
    payload["mergeable_ranks"][300][1] = 5000  # id 300 now unused
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"tokenizer.json: .*must be the ids 0\.\.\d+, each once; "
                                         r"no token has id \[300\]"):
        Tokenizer.load(path)


def test_load_refuses_what_tiktoken_would_panic_on_or_encode_differently(tmp_path):
    """tiktoken builds an Encoding from these, then panics at the first encode (a missing single byte, a
    pattern that matches "") or silently splits text around an empty token; each is refused at load."""
    path = sample_tok().save(tmp_path / "tokenizer.json")
    good = json.loads(path.read_text())
    assert base64.b64decode(good["mergeable_ranks"][97][0]) == b"a" and good["mergeable_ranks"][300][1] == 300
    cases = [(lambda p: p["mergeable_ranks"][97].__setitem__(0, base64.b64encode(b"\xfe\xfe\xfe").decode()),
              r"tokenizer.json: .*no token for the single bytes \[97\]"),
             (lambda p: p.__setitem__("pattern", ""), r"tokenizer.json: .*pattern '' matches the empty string"),
             (lambda p: p.__setitem__("pattern", r"\s*"), r"tokenizer.json: .*pattern '\\\\s\*' matches the empty"),
             (lambda p: p["mergeable_ranks"][300].__setitem__(0, ""),
              r"tokenizer.json: mergeable_ranks\[300\] = \['', 300\]: the token is empty")]
    for change, message in cases:
        payload = json.loads(json.dumps(good))
        change(payload)
        path.write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=message):
            Tokenizer.load(path)
    ranks = {bytes([b]): b for b in range(256)}  # the constructor itself refuses them too
    with pytest.raises(ValueError, match=r"empty token \(0 bytes, rank 256\)"):
        Tokenizer("t", GPT2_SPLIT_PATTERN, {**ranks, b"": 256})
    del ranks[b"\x00"], ranks[b"\xff"]
    with pytest.raises(ValueError, match=r"no token for the single bytes \[0, 255\]"):
        Tokenizer("t", GPT2_SPLIT_PATTERN, ranks)


def test_a_pattern_must_cover_every_character_with_non_empty_pre_tokens(tmp_path):
    """tiktoken encodes only the pattern's matches (the rest is silently lost) and panics on some empty
    matches. A pattern is tried on a test text when the tokenizer is built, and each encode checks that
    its ids hold every byte of the text."""
    ranks = {bytes([b]): b for b in range(256)}
    words = r"\w+"  # punctuation and spaces would vanish
    with pytest.raises(ValueError, match=re.escape(f"pattern {words!r} covers no pre-token at text[0:16] = ' !\"#")):
        Tokenizer("t", words, dict(ranks))
    with pytest.raises(ValueError, match=r"matches the empty string at text\[1\] \(before '!\"#"):
        Tokenizer("t", r"(?=!)|[^!]+|!", dict(ranks))  # "" only in front of "!"
    path = sample_tok().save(tmp_path / "tokenizer.json")
    payload = json.loads(path.read_text())
    payload["pattern"] = no_spaces = r"\S+"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="tokenizer.json: .*" + re.escape(f"pattern {no_spaces!r} covers no pre-token "
                                                                         "at text[0:1] = ' '")):
        Tokenizer.load(path)
    # patterns that pass the test text but fail on other text: refused on that text, nothing returned
    skips_zhe = Tokenizer("t", "[^\u0416]+", dict(ranks))  # covers everything but one Cyrillic letter
    assert skips_zhe.encode("ab c") == list(b"ab c")
    with pytest.raises(ValueError, match=r"covers no pre-token at text\[3:4\] = '\u0416'; tiktoken encodes only"):
        skips_zhe.encode("ab \u0416 c")
    empty_before_zhe = Tokenizer("t", "(?=\u0416)|\\S+|\\s+", dict(ranks))
    assert empty_before_zhe.encode("a b") == list(b"a b")
    with pytest.raises(ValueError, match=r"matches the empty string at text\[2\]"):
        empty_before_zhe.encode("a \u0416b")  # tiktoken drops the letter
    with pytest.raises(ValueError, match=r"tiktoken panicked .*matches the empty string at text\[0\]"):
        empty_before_zhe.encode("\u0416\u0416b")  # tiktoken's Rust code panics (a BaseException)


def test_hf_vocabulary_with_an_unused_id_is_refused_at_import(tmp_path):
    u = bytes_to_unicode()
    vocab = {u[b]: b for b in range(256)}
    vocab["ab"] = 256
    vocab[ENDOFTEXT] = 258  # id 257 belongs to no token
    with pytest.raises(ValueError, match=r"vocab.json: .*must be the ids 0\.\.261, each once; no token has id \[257\]"):
        Tokenizer.from_hf_bpe(vocab, [("a", "b")])
    vocab[ENDOFTEXT] = 257  # without the gap it imports, saves and loads back
    tok = Tokenizer.from_hf_bpe(vocab, [("a", "b")])
    assert tok.n_vocab == 262 and tok.encode("cab") == [ord("c"), 256]
    assert Tokenizer.load(tok.save(tmp_path / "tokenizer.json")).special_tokens == tok.special_tokens


def test_hf_import_errors_name_the_tokens_and_ids():
    u = bytes_to_unicode()
    vocab = {u[b]: b for b in range(256)}
    vocab["ab"] = 256
    vocab[ENDOFTEXT] = 257  # a special entry of the vocabulary, not made by a merge
    with pytest.raises(ValueError, match=r"vocab.json: added token '<\|endoftext\|>' has id 300, but the "
                                         r"vocabulary gives it id 257$"):
        Tokenizer.from_hf_bpe(vocab, [("a", "b")], {ENDOFTEXT: 300})
    with pytest.raises(ValueError, match=r"added token '<\|endoftext\|>' has id '257', but the vocabulary gives it "
                                         r"id 257$"):
        Tokenizer.from_hf_bpe(vocab, [("a", "b")], {ENDOFTEXT: "257"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"added token 'ab' \(id 256\) is an ordinary BPE token with id 256"):
        Tokenizer.from_hf_bpe(vocab, [("a", "b")], {"ab": 256})  # made by the merge a b
    with pytest.raises(ValueError, match=r"vocab.json: tokens 'ab' and 'x y' share the id 256; every id must appear "
                                         r"once"):
        Tokenizer.from_hf_bpe({**vocab, "x y": 256}, [("a", "b")])


# ---------------------------------------------------------------------------------------------------
# GPT-2


def test_gpt2_without_cached_files_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR") as err:
        Tokenizer.gpt2()
    assert str(tmp_path) in str(err.value) and "vocab.bpe" in str(err.value) and "encoder.json" in str(err.value)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "dg"))
    with pytest.raises(RuntimeError, match="dg"):
        Tokenizer.gpt2()


def test_gpt2_when_cached_files_exist():
    try:
        tok = Tokenizer.gpt2()
    except RuntimeError as e:
        assert "never downloads" in str(e)
        pytest.skip("GPT-2 tokenizer files are not in the local tiktoken cache")
    assert tok.encode("Hello world") == [15496, 995]  # well-known GPT-2 ids
    assert tok.eot_id == 50256
    assert [tok.user_id, tok.assistant_id, tok.end_id, tok.pad_id] == [50257, 50258, 50259, 50260]
    assert tok.n_vocab == 50261
    assert tok.decode(tok.encode("a <|end|> b")) == "a <|end|> b"


def test_gpt2_files_import_through_hf_bpe_with_the_same_ranks():
    """OpenAI's encoder.json + vocab.bpe are GPT-2's vocab.json + merges.txt: they pass every merge check of
    hf_bpe_to_ranks and give tiktoken's own GPT-2 ranks."""
    try:
        tok = Tokenizer.gpt2()
    except RuntimeError:
        pytest.skip("GPT-2 tokenizer files are not in the local tiktoken cache")
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or Path(tempfile.gettempdir()) / "data-gym-cache")
    cached = {name: cache / hashlib.sha1(url.encode()).hexdigest() for name, (url, _) in _GPT2_FILES.items()}
    imported = Tokenizer.from_vocab_merges(cached["encoder.json"], cached["vocab.bpe"])
    assert imported.mergeable_ranks == tok.mergeable_ranks
    assert imported.special_tokens == tok.special_tokens
