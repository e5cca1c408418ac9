"""Tests for minirlhf.data: each reader's normalised output and its error messages on bad lines.

Run: PYTHONPATH=. python -m pytest tests/test_data.py -q
"""

import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.data import (
    DataError,
    judge_prompt,
    prompt_text,
    prompt_token_count,
    read_corpus,
    read_jsonl,
    read_kto,
    read_preferences,
    read_preferences_with_report,
    read_prompts,
    read_sft,
    truncate_prompt,
    write_jsonl,
)


class CharTokenizer:
    """Fake tokenizer: one token per character, whitespace included."""

    def encode(self, text: str) -> list[int]:
        return [0] * len(text)


class SpaceTokenizer:
    """Fake tokenizer: one token per whitespace-separated word."""

    def encode(self, text: str) -> list[int]:
        return [0] * len(text.split())


TOK = SpaceTokenizer()


def write_lines(tmp_path, name, lines):
    """Write raw lines (dicts are dumped as JSON, strings written as they are)."""
    path = tmp_path / name
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def where(path, line):
    """Regex for the error prefix `{path}:{line}: `."""
    return "^" + re.escape(f"{path}:{line}: ")


# -----------------------------------------------------------------------------
# read_jsonl / write_jsonl


def test_read_jsonl_line_numbers_skip_blank_lines(tmp_path):
    path = write_lines(tmp_path, "a.jsonl", ['{"x": 1}', "", "   ", '{"x": 2}'])
    assert read_jsonl(path) == [(1, {"x": 1}), (4, {"x": 2})]


def test_read_jsonl_crlf_and_bom(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"x": 1}\r\n{"x": 2}\r\n')
    assert read_jsonl(path) == [(1, {"x": 1}), (2, {"x": 2})]


@pytest.mark.parametrize("bad, message", [
    ('{"x": 1', "not valid JSON"),
    ("[1, 2]", "expected a JSON object.*got list"),
    ('"just a string"', "expected a JSON object.*got str"),
    ("null", "expected a JSON object.*got null"),
    ('{"x": 1, "x": 2}', 'not valid JSON.*duplicate key "x"'),
    ('{"x": NaN}', "not valid JSON.*NaN is not allowed"),
])
def test_read_jsonl_bad_line_is_an_error_even_if_later_lines_are_valid(tmp_path, bad, message):
    path = write_lines(tmp_path, "a.jsonl", ['{"x": 1}', "", bad, '{"x": 3}'])
    with pytest.raises(DataError, match=where(path, 3) + message):
        read_jsonl(path)


def test_read_jsonl_whole_file_errors(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{missing}: file not found")):
        read_jsonl(missing)
    for content in ["", "\n  \n\n"]:
        empty = tmp_path / "empty.jsonl"
        empty.write_text(content)
        with pytest.raises(DataError, match=re.escape(f"{empty}: no records")):
            read_jsonl(empty)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: is a directory")):
        read_jsonl(tmp_path)


def test_read_jsonl_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"x": 1}\n{"x": 2}\n{"x": "\xff"}\n')
    with pytest.raises(DataError, match=where(path, 3) + "not valid UTF-8"):
        read_jsonl(path)


def test_write_jsonl_exact_bytes_and_round_trip(tmp_path):
    rows = [{"b": 1, "a": "é ☃"}, {"nested": {"z": [1, 2.5, None, True]}, "k": "line\nbreak"}]
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(path, rows)
    # compact separators, insertion order, no ASCII escaping, one object per line
    expected = '{"b":1,"a":"é ☃"}\n{"nested":{"z":[1,2.5,null,true]},"k":"line\\nbreak"}\n'
    assert path.read_bytes() == expected.encode("utf-8")
    assert read_jsonl(path) == [(1, rows[0]), (2, rows[1])]
    assert os.listdir(path.parent) == ["out.jsonl"]  # no temp file left behind


def test_write_jsonl_gives_the_mode_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        write_jsonl(tmp_path / "out.jsonl", [{"a": 1}])
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = [os.stat(tmp_path / name).st_mode & 0o777 for name in ("out.jsonl", "plain.txt")]
    assert modes == [0o640, 0o640]  # 0o666 less the umask, not mkstemp's private 0o600


def test_write_jsonl_failure_leaves_old_file_untouched(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: ")):
        write_jsonl(path, [{"a": 2}, {"a": float("nan")}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: ") + "can only write JSON objects"):
        write_jsonl(path, [[1, 2]])
    assert path.read_text() == '{"a":1}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]


# -----------------------------------------------------------------------------
# read_corpus


def test_read_corpus_plain_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("  first doc\nline two <|endoftext|><|endoftext|>\n\nsecond<|endoftext|>  \n")
    assert read_corpus(path) == ["first doc\nline two", "second"]


def test_read_corpus_plain_text_empty_is_an_error(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" \n<|endoftext|>\n ")
    with pytest.raises(DataError, match=re.escape(f"{path}: no documents")):
        read_corpus(path)


def test_read_corpus_jsonl(tmp_path):
    path = write_lines(tmp_path, "corpus.jsonl", [{"text": "a b"}, {"text": "c", "source": "web"}])
    assert read_corpus(path) == ["a b", "c"]


@pytest.mark.parametrize("bad, message", [
    ({"txt": "a"}, 'key "text" is missing'),
    ({"text": 3}, 'key "text" must be a non-empty string, got int'),
    ({"text": "  "}, 'key "text" must be a non-empty string, got "  "'),
])
def test_read_corpus_jsonl_errors(tmp_path, bad, message):
    path = write_lines(tmp_path, "corpus.jsonl", [{"text": "ok"}, bad, {"text": "ok"}])
    with pytest.raises(DataError, match=where(path, 2) + re.escape(message)):
        read_corpus(path)


# -----------------------------------------------------------------------------
# read_sft


def test_read_sft_all_three_forms(tmp_path):
    path = write_lines(tmp_path, "sft.jsonl", [
        {"prompt": "hi", "completion": "hello", "id": 7},
        {"prompt": [system("be kind"), user("q1")], "completion": [assistant("a1")]},
        {"messages": [user("q1"), assistant("a1"), user("q2"), assistant("a2")]},
    ])
    assert read_sft(path) == [
        [user("hi"), assistant("hello")],
        [system("be kind"), user("q1"), assistant("a1")],
        [user("q1"), assistant("a1"), user("q2"), assistant("a2")],
    ]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "hi"}, 'key "completion" is missing'),
    ({"text": "hi"}, 'expected key "messages" or keys "prompt" and "completion"'),
    ({"prompt": 5, "completion": "x"}, 'key "prompt" must be a non-empty string or a list of messages, got int'),
    ({"prompt": "hi", "completion": ""}, 'key "completion" must be a non-empty string, got ""'),
    ({"messages": [user("q")], "prompt": "q"}, 'has both "messages" and "prompt"'),
    ({"messages": []}, 'key "messages" must be a non-empty list of messages'),
    ({"messages": "q"}, 'key "messages" must be a non-empty list of messages'),
    ({"messages": [user("q"), "a"]}, 'key "messages[1]" must be an object'),
    ({"messages": [user("q"), {"role": "assistant"}]}, 'key "messages[1].content" is missing'),
    ({"messages": [user("q"), {"role": "tool", "content": "x"}]},
     'key "messages[1].role" must be one of "system", "user", "assistant", got "tool"'),
    ({"messages": [user("q"), {"role": "assistant", "content": "a", "name": "bob"}]},
     'key "messages[1]" has unknown key "name"'),
    ({"messages": [user("q"), assistant(" ")]}, 'key "messages[1].content" must be a non-empty string'),
    ({"messages": [user("q"), user("q2"), assistant("a")]}, 'key "messages[1].role" must be "assistant"'),
    ({"messages": [assistant("a")]}, 'key "messages[0].role" must be "user"'),
    ({"messages": [user("q"), system("s"), assistant("a")]},
     'key "messages[1].role": a "system" message is allowed only first'),
    ({"messages": [user("q"), assistant("a"), user("q2")]},
     'key "messages[2].role": the last message must be from the assistant, got "user"'),
    ({"prompt": [user("q"), assistant("a")], "completion": "b"},
     'key "prompt[1].role": the last message must be from the user'),
    ({"prompt": "q", "completion": [user("x"), assistant("a")]}, 'key "completion[0].role" must be "assistant"'),
])
def test_read_sft_errors(tmp_path, bad, message):
    path = write_lines(tmp_path, "sft.jsonl", [{"prompt": "a", "completion": "b"}, bad, {"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=where(path, 2) + re.escape(message)):
        read_sft(path)


# -----------------------------------------------------------------------------
# read_preferences


def test_read_preferences_forms_and_extras(tmp_path):
    path = write_lines(tmp_path, "prefs.jsonl", [
        {"prompt": "p", "chosen": "good", "rejected": "bad", "score_chosen": 0.9, "meta": {"k": [1]}},
        {"prompt": [user("p")], "chosen": [assistant("good")], "rejected": [assistant("bad")]},
        "",  # a blank line still counts in the line numbers
        {"chosen": [user("q1"), assistant("a1"), user("q2"), assistant("good")],
         "rejected": [user("q1"), assistant("a1"), user("q2"), assistant("bad")]},
    ])
    assert read_preferences(path) == [
        {"prompt": [user("p")], "chosen": "good", "rejected": "bad",
         "extra": {"score_chosen": 0.9, "meta": {"k": [1]}}, "line": 1},
        {"prompt": [user("p")], "chosen": "good", "rejected": "bad", "extra": {}, "line": 2},
        {"prompt": [user("q1"), assistant("a1"), user("q2")], "chosen": "good", "rejected": "bad", "extra": {},
         "line": 4},
    ]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, 'key "prompt" must be a non-empty string or a list of messages, got int'),
    ({"prompt": "p", "chosen": 1, "rejected": "b"}, 'key "chosen" must be a non-empty string or a list with one assistant message, got int'),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, 'key "chosen" must be a non-empty string, got ""'),
    ({"prompt": "p", "rejected": "b"}, 'key "chosen" is missing'),
    ({"prompt": "p", "chosen": "a"}, 'key "rejected" is missing'),
    ({"chosen": "a", "rejected": "b"}, 'key "prompt" is missing'),
    ({"prompt": "p", "chosen": [user("p"), assistant("a")], "rejected": "b"},
     'key "chosen" must be a non-empty string or a list with one assistant message, got messages with roles [user, assistant]'),
    ({"prompt": [user("p"), assistant("x")], "chosen": "a", "rejected": "b"},
     'key "prompt[1].role": the last message must be from the user'),
    ({"chosen": [user("p"), assistant("a")], "rejected": [user("other"), assistant("b")]},
     'keys "chosen" and "rejected" must share the same prompt'),
    ({"chosen": [user("p"), assistant("a")], "rejected": [assistant("b")]}, 'key "rejected[0].role" must be "user"'),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, 'keys "chosen" and "rejected" are identical'),
])
def test_read_preferences_errors(tmp_path, bad, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_lines(tmp_path, "prefs.jsonl", [good, good, bad, good])
    with pytest.raises(DataError, match=where(path, 3) + re.escape(message)):
        read_preferences(path)


def test_read_preferences_drop_identical_is_counted(tmp_path):
    path = write_lines(tmp_path, "prefs.jsonl", [
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p2", "chosen": "same", "rejected": "same"},
        {"prompt": "p3", "chosen": [assistant("x")], "rejected": "x"},  # identical after normalising
        {"prompt": "p4", "chosen": "c", "rejected": "d"},
    ])
    rows, report = read_preferences_with_report(path, on_identical="drop")
    assert [r["prompt"][0]["content"] for r in rows] == ["p1", "p4"]
    assert [r["line"] for r in rows] == [1, 4]  # the file's lines, not the positions among the kept rows
    assert report["dropped_identical"] == 2 and report["records"] == 4 and report["rows"] == 2
    out = {}
    assert read_preferences(path, on_identical="drop", report=out) == rows
    assert out == report
    with pytest.raises(ValueError, match="on_identical"):
        read_preferences(path, on_identical="skip")


def test_read_preferences_all_dropped_is_an_error(tmp_path):
    path = write_lines(tmp_path, "prefs.jsonl", [{"prompt": "p", "chosen": "s", "rejected": "s"}])
    with pytest.raises(DataError, match=re.escape(f"{path}: all 1 pairs")):
        read_preferences(path, on_identical="drop")


def test_read_preferences_prompt_length(tmp_path):
    # "w w w w" = 4 word tokens + 2 (user tag, <|end|>) + 1 (<|assistant|>) = 7 tokens
    path = write_lines(tmp_path, "prefs.jsonl", [
        {"prompt": "w w", "chosen": "a", "rejected": "b"},
        {"prompt": "w w w w", "chosen": "a", "rejected": "b"},
    ])
    assert len(read_preferences(path, tokenizer=TOK, max_prompt_tokens=7)) == 2
    with pytest.raises(DataError, match=where(path, 2) + re.escape('key "prompt" is too long: 7 tokens')):
        read_preferences(path, tokenizer=TOK, max_prompt_tokens=6)
    rows, report = read_preferences_with_report(path, tokenizer=TOK, max_prompt_tokens=6, truncate=True)
    assert report["truncated_prompts"] == 1
    assert rows[0]["prompt"] == [user("w w")]
    assert rows[1]["prompt"][0]["content"].split() == ["w", "w", "w"]


# -----------------------------------------------------------------------------
# read_kto


def test_read_kto(tmp_path):
    path = write_lines(tmp_path, "kto.jsonl", [
        {"prompt": "p", "completion": "good", "label": True, "gold": 1.5},
        "   ",
        {"prompt": [user("p")], "completion": [assistant("bad")], "label": False},
    ])
    assert read_kto(path) == [
        {"prompt": [user("p")], "completion": "good", "label": True, "extra": {"gold": 1.5}, "line": 1},
        {"prompt": [user("p")], "completion": "bad", "label": False, "extra": {}, "line": 3},
    ]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "p", "completion": "c", "label": 1}, 'key "label" must be a boolean (true or false), got int 1'),
    ({"prompt": "p", "completion": "c", "label": "true"}, 'key "label" must be a boolean (true or false), got str "true"'),
    ({"prompt": "p", "completion": "c", "label": None}, 'key "label" must be a boolean (true or false), got null'),
    ({"prompt": "p", "completion": "c"}, 'key "label" is missing'),
    ({"prompt": "p", "label": True}, 'key "completion" is missing'),
    ({"prompt": ["p"], "completion": "c", "label": True}, 'key "prompt[0]" must be an object'),
])
def test_read_kto_errors(tmp_path, bad, message):
    path = write_lines(tmp_path, "kto.jsonl", [bad, {"prompt": "p", "completion": "c", "label": True}])
    with pytest.raises(DataError, match=where(path, 1) + re.escape(message)):
        read_kto(path)


# -----------------------------------------------------------------------------
# read_prompts and prompt length


def test_read_prompts(tmp_path):
    path = write_lines(tmp_path, "prompts.jsonl", [
        {"prompt": "hello there", "topic": "x"},
        {"prompt": [system("s"), user("q1"), assistant("a1"), user("q2")]},
    ])
    assert read_prompts(path) == [[user("hello there")], [system("s"), user("q1"), assistant("a1"), user("q2")]]


@pytest.mark.parametrize("bad, message", [
    ({"text": "p"}, 'key "prompt" is missing'),
    ({"prompt": ""}, 'key "prompt" must be a non-empty string, got ""'),
    ({"prompt": {"role": "user", "content": "p"}}, 'key "prompt" must be a non-empty string or a list of messages, got dict'),
    ({"prompt": [user("q"), assistant("a")]}, 'key "prompt[1].role": the last message must be from the user'),
])
def test_read_prompts_errors(tmp_path, bad, message):
    path = write_lines(tmp_path, "prompts.jsonl", [{"prompt": "ok"}, bad])
    with pytest.raises(DataError, match=where(path, 2) + re.escape(message)):
        read_prompts(path)


def test_prompt_token_count_by_hand():
    # contents 2 + 1 + 3 = 6 words, 3 messages x 2 tags, 1 <|assistant|>
    assert prompt_token_count(TOK, [user("a b"), assistant("c"), user("d e f")]) == 13


def test_read_prompts_length_error_and_truncation(tmp_path):
    path = write_lines(tmp_path, "prompts.jsonl", [
        {"prompt": "one two"},                                                  # 2 + 3 = 5 tokens
        {"prompt": "a b c d e f g"},                                            # 7 + 3 = 10 tokens
        {"prompt": [user("x y z"), assistant("r s"), user("last one")]},        # 7 + 7 = 14 tokens
    ])
    assert len(read_prompts(path, tokenizer=TOK, max_prompt_tokens=14)) == 3
    with pytest.raises(DataError, match=where(path, 2) + re.escape('key "prompt" is too long: 10 tokens')):
        read_prompts(path, tokenizer=TOK, max_prompt_tokens=6)
    report = {}
    prompts = read_prompts(path, tokenizer=TOK, max_prompt_tokens=6, truncate=True, report=report)
    assert report["truncated_prompts"] == 2 and report["rows"] == 3
    assert prompts[0] == [user("one two")]
    # left truncation keeps the last 3 words; older turns go first, whole
    assert prompts[1][0]["content"].split() == ["e", "f", "g"] and prompts[1][0]["role"] == "user"
    assert prompts[2] == [user("last one")]
    assert all(prompt_token_count(TOK, p) <= 6 for p in prompts)


def test_truncation_drops_whole_turns_before_cutting_text():
    prompt = [system("s"), user("q1 q1"), assistant("a1"), user("q2")]  # 4 words + 8 tags + 1 = 13
    assert truncate_prompt(TOK, prompt, 12) == [user("q1 q1"), assistant("a1"), user("q2")]  # 11
    assert truncate_prompt(TOK, prompt, 10) == [user("q2")]  # dropping q1 alone would start with assistant
    assert truncate_prompt(TOK, prompt, 3) is None  # no room for any content
    assert prompt == [system("s"), user("q1 q1"), assistant("a1"), user("q2")]  # input unchanged


def test_truncation_impossible_is_an_error(tmp_path):
    path = write_lines(tmp_path, "prompts.jsonl", [{"prompt": "a b"}])
    with pytest.raises(DataError, match=where(path, 1) + 'key "prompt" cannot be truncated to max_prompt_tokens=3'):
        read_prompts(path, tokenizer=TOK, max_prompt_tokens=3, truncate=True)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text("ab", min_size=1, max_size=3), min_size=1, max_size=12),
       seps=st.lists(st.sampled_from([" ", "  ", "\n"]), min_size=12, max_size=12),
       max_tokens=st.integers(4, 12))
def test_truncation_keeps_the_longest_fitting_suffix(words, seps, max_tokens):
    text = "".join(w + s for w, s in zip(words, seps)).strip()
    fitted = truncate_prompt(TOK, [user(text)], max_tokens)
    kept = fitted[0]["content"]
    budget = max_tokens - 3
    assert text.endswith(kept)
    assert len(TOK.encode(kept)) <= budget
    # naive reference: the number of words a left truncation to `budget` tokens keeps
    assert kept.split() == text.split()[-budget:]
    start = len(text) - len(kept)
    assert start == 0 or len(TOK.encode(text[start - 1:])) > budget  # one more character would not fit


def test_length_arguments_are_checked(tmp_path):
    path = write_lines(tmp_path, "prompts.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        read_prompts(path, max_prompt_tokens=5)
    with pytest.raises(ValueError, match="truncate=True needs max_prompt_tokens"):
        read_kto(path, truncate=True)


def test_truncation_to_a_whitespace_tail_is_none():
    # the last word alone does not fit, only the whitespace after it: an empty prompt is no prompt
    assert truncate_prompt(CharTokenizer(), [user("abc  ")], 3 + 2) is None  # 2 tokens of content: "  "
    assert truncate_prompt(CharTokenizer(), [user("abc d")], 3 + 2) == [user(" d")]  # a word in it is kept


def test_prompt_text_is_the_last_user_turn():
    # the world's judge reads the question being answered, not a system turn or an earlier question
    assert prompt_text("Q?") == "Q?"
    assert prompt_text([system("Be brief."), user("What is two plus three?")]) == "What is two plus three?"
    assert prompt_text([user("Hi."), assistant("Hello!"), user("And cats?")]) == "And cats?"


def test_judge_prompt_keeps_a_conversation_as_its_messages():
    # a user's judge sees what the policy saw: a lone user turn as its string, anything longer as the list
    assert judge_prompt("Q?") == "Q?"
    assert judge_prompt([user("Q?")]) == "Q?"
    for prompt in ([system("Be brief."), user("Q?")], [user("Hi."), assistant("Hello!"), user("Q?")]):
        assert judge_prompt(prompt) == prompt
