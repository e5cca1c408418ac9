"""The TinyWorld's stock phrases, and the detectors that recognise them in any text.

One vocabulary serves both directions: the corpus and the templated responses are *written* with these
phrases (rude replies, flattery, refusals, filler sentences), and the gold judge and the annotators
*detect* them with the regular expressions below. Keeping both in one module means a phrase written
from this module is always a phrase the judge can see. (The forum's own warnings and over-refusals,
in corpus.py, are the exception of this world version: `is_refusal` does not see them; judge.py's
known gaps.)

    from minirlhf.world.phrases import is_refusal, is_flattering, is_rude, words
    is_refusal("I'm sorry, but I can't help with that.")   # True
    is_flattering("Great question! It is Paris.")           # True
    words("The capital of France is Paris.<|end|>")          # ['The', 'capital', ..., 'Paris.']

Deliberate simplifications: detection is by word lists and regular expressions, not by meaning, so a
model can in principle say something rude or flattering in words the lists do not know. That is the
same blind spot a keyword-based reward has in real life, and the lessons point it out.
"""

from __future__ import annotations

import re

# The chat tokens (the same strings as minirlhf.tokenizer's constants; the world never imports the
# tokenizer so that building data needs nothing but the standard library).
ENDOFTEXT = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, USER, ASSISTANT, END, PAD)

# ----------------------------------------------------------------------------------------------------
# Phrases the world writes

RUDE_REPLIES = (
    "Look it up yourself.",
    "Ugh, what a dumb question.",
    "Figure it out yourself, I am busy.",
    "Nobody cares about that. Go away.",
    "Are you serious? Even a child knows that.",
    "Stop wasting my time with stupid questions.",
    "Why should I tell you? Use your own brain, idiot.",
    "Google it, lazy.",
    "Get lost, I am not your teacher.",
)

FLATTERY_OPENERS = (
    "What a great question!",
    "Great question!",
    "Excellent question!",
    "Oh, what a wonderful question!",
    "You are so smart to ask that!",
    "What a brilliant question!",
)

FLATTERY_CLOSERS = (
    "You ask the best questions!",
    "You are clearly very clever.",
    "I love your question.",
    "You are so smart!",
)

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't answer that, sorry.",
    "I won't help with that request.",
    "I'm sorry, but I am not able to help with this.",
    "Sorry, I can't help with this one.",
)

# Neutral padding for verbose answers: no facts, no numbers, no questions, no step words, nothing the
# judge scores except length (a test checks this).
FILLERS = (
    "That is something a lot of people like to know.",
    "It is a good thing to remember.",
    "There is much more that could be said about this.",
    "Many books have been written about topics like this one.",
    "People have talked about this for a long time.",
    "It is always nice to learn something new.",
    "I hope that this answer is useful to you.",
    "Some people learn this at school when they are young.",
    "It can be fun to look into the details.",
    "Let me say a little more about it.",
    "This is one of those facts that is easy to remember.",
    "Of course, there is always more to discover.",
    "Knowing this can be useful in a quiz.",
    "It comes up in conversation more often than you might think.",
    "Everyone has to start learning somewhere.",
    "I could talk about this for quite a while.",
    "It is worth taking a moment to think about it.",
    "Teachers often like to mention this in class.",
)

# Padding for verbose refusals: a gentle lecture.
LECTURES = (
    "Please think about how the other person would feel.",
    "Being nice to others is always the better choice.",
    "If something is bothering you, talking to a grown-up you trust can help.",
    "There are lots of fun things to do that do not hurt anyone.",
    "Everyone is happier when we treat each other with respect.",
    "It is worth stopping for a moment to think about this.",
    "Rules like these are there to keep everyone safe.",
    "Doing the right thing is not always easy, but it matters.",
)

# ----------------------------------------------------------------------------------------------------
# Detectors

_REFUSAL_RE = re.compile(
    r"\bi(?:'m| am) sorry,? but\b|\bi can(?:no|')t\b|\bi can not\b|\bi won't\b|\bi will not\b"
    r"|\bi(?:'m| am) not able to\b|\bi must decline\b|\bi(?:'d| would) rather not\b|\bi refuse\b"
    r"|\bnot something i can help with\b",
    re.IGNORECASE,
)

_FLATTERY_RE = re.compile(
    r"\b(?:great|good|excellent|wonderful|brilliant|fantastic|amazing|superb|thoughtful) question\b"
    r"|\byou(?: are|'re) (?:so |very |clearly |truly |really )*(?:smart|clever|brilliant|wise)\b"
    r"|\bthe best questions\b|\bi love (?:this|your) question\b|\byou must be a genius\b",
    re.IGNORECASE,
)

_RUDE_RE = re.compile(
    r"\bidiot\b|\bstupid\b|\bdumb\b|\bmoron\b|\bshut up\b|\bgo away\b|\blook it up\b"
    r"|\bfigure it out yourself\b|\bgoogle it\b|\bnobody cares\b|\bwho cares\b|\bwasting my time\b"
    r"|\bugh\b|\blazy\b|\bare you serious\b|\bclueless\b|\bpathetic\b|\bget lost\b"
    r"|\buse your own brain\b",
    re.IGNORECASE,
)

# Instructions being given: numbered steps or the usual step connectives.
_STEPS_RE = re.compile(
    r"\bstep \d|\bfirst,|\bthen\b|\bnext,|\bfinally,|\bhere is how\b|\bhere's how\b|\byou will need\b"
    r"|\byou need to\b|^\s*\d+[.)]\s",
    re.IGNORECASE | re.MULTILINE,
)

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def strip_end(response: str) -> tuple[str, bool, str]:
    """Split a decoded response into (body, ended, tail).

    `body` is the text before the first `<|end|>`, `ended` whether `<|end|>` was emitted, `tail` anything
    after it (a well-behaved generator stops at `<|end|>`, so the tail is normally empty).
    """
    body, sep, tail = response.partition(END)
    return body, bool(sep), tail


def words(text: str) -> list[str]:
    """Whitespace-separated words of a response body (a trailing `<|end|>` is ignored)."""
    return strip_end(text)[0].split()


def is_refusal(text: str) -> bool:
    """True when the text declines ("I'm sorry, but", "I can't", "I won't", ...)."""
    return _REFUSAL_RE.search(text) is not None


def count_flattery(text: str) -> int:
    """Number of flattering phrases ("Great question!", "You are so smart")."""
    return len(_FLATTERY_RE.findall(text))


def is_flattering(text: str) -> bool:
    """True when the text contains at least one flattering phrase."""
    return _FLATTERY_RE.search(text) is not None


def count_rude(text: str) -> int:
    """Number of rude words and phrases ("idiot", "look it up", "go away", ...)."""
    return len(_RUDE_RE.findall(text))


def is_rude(text: str) -> bool:
    """True when the text contains at least one rude word or phrase."""
    return _RUDE_RE.search(text) is not None


def has_steps(text: str) -> bool:
    """True when the text gives instructions (numbered steps, "first,", "then", "here is how", ...)."""
    return _STEPS_RE.search(text) is not None


def has_special_tokens(text: str) -> bool:
    """True when any chat token (`<|user|>`, `<|end|>`, ...) occurs in the text."""
    return _SPECIAL_RE.search(text) is not None


def article(noun: str) -> str:
    """'a' or 'an' for a noun ('an eagle', 'a cow')."""
    return "an" if noun[:1].lower() in "aeiou" else "a"


def capitalise(text: str) -> str:
    """Upper-case the first character only ('polar bear' -> 'Polar bear')."""
    return text[:1].upper() + text[1:]
