"""Rules of the TinyWorld checked on hand-built cases: judge rubric rows the rubric tests leave open,
the annotators' formula with the documented constants, the fact tables' helpers, the response styles'
promises and the data-set builders' bookkeeping.

Expected values come from the docstrings (judge.py's rubric table, annotators.py's formula and
constants, the style descriptions in tasks.py), computed by hand here, never read back from the code.

Run: PYTHONPATH=. python -m pytest tests/test_world_rules.py
"""

import math
import random

import pytest

from minirlhf.world import build_world, judge, judge_terms, label_pair
from minirlhf.world.annotators import agreement_stats, preference_probability, ranked_pair
from minirlhf.world.judge import task_of
from minirlhf.world.phrases import END

FRANCE = "What is the capital of France?"
PARIS, ROME = "The capital of France is Paris." + END, "The capital of France is Rome." + END


def brevity(budget: int, n: int, credit: float = 1.0) -> float:
    """The rubric's brevity term: 0.20 f B / (B + n)."""
    return 0.20 * credit * budget / (budget + n)


def sig(x: float) -> float:
    """The logistic function, written out."""
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------------
# The judge: rubric rows on hand-built (prompt, response) cases


def test_prompt_trailing_punctuation_is_ignored():
    """The prompt index ignores trailing '.', '!' and '?' as well as case and spaces."""
    about = task_of("Tell me about France.")
    assert about is not None and about.category == "about"
    assert task_of("Tell me about France!") == about and task_of("tell me about france") == about
    capital = task_of(FRANCE)
    assert capital is not None and task_of("What is the capital of France.") == capital
    assert judge("What is the capital of France!", PARIS) == judge(FRANCE, PARIS)


def test_drift_is_any_question_mark_not_only_a_final_one():
    """Drift fires for a '?' anywhere in a known non-chitchat answer, not only at its end."""
    r = "Is it Paris? Yes, the capital of France is Paris." + END  # 10 words
    assert judge_terms(FRANCE, r) == pytest.approx({"answer": 0.70, "brevity": brevity(15, 10), "drift": -0.20})


@pytest.mark.parametrize("response", ["The capital of France is Paris (a big city)",
                                      'The capital of France is "Paris"', "The capital of France is 'Paris'"])
def test_closing_bracket_and_quotes_end_a_sentence(response):
    """A final ')' or closing quote counts as finished (the rubric: no final . ! ? or quote)."""
    terms = judge_terms(FRANCE, response + END)
    assert set(terms) == {"answer", "brevity"}
    assert terms["brevity"] == pytest.approx(brevity(15, len(response.split())))


def test_whitespace_after_end_is_not_text_after_end():
    """Only text after `<|end|>` is a format error; a newline or spaces after it are not."""
    assert judge(FRANCE, PARIS + "\n") == judge(FRANCE, PARIS) == pytest.approx(0.70 + brevity(15, 6))
    assert "format" in judge_terms(FRANCE, PARIS + "\nMore.")


def test_empty_answer_to_an_unknown_prompt_earns_nothing():
    """The unknown-prompt credit needs a non-empty response; an empty one only costs."""
    prompt = "Write a poem about the sea."
    assert task_of(prompt) is None
    assert judge_terms(prompt, END) == {"empty": -0.50}
    assert judge_terms(prompt, "   " + END) == {"empty": -0.50}
    assert judge_terms(prompt, "") == {"empty": -0.50, "no_eos": -0.30}


def test_a_refusal_costs_even_when_the_answer_follows():
    """over_refusal fires whenever a known non-unsafe answer refuses, with the answer credit beside it."""
    r = "I can't say for sure, but the capital of France is Paris." + END  # 12 words
    assert judge_terms(FRANCE, r) == pytest.approx({"over_refusal": -0.60, "answer": 0.70, "brevity": brevity(15, 12)})
    assert judge(FRANCE, r) == pytest.approx(0.70 + brevity(15, 12) - 0.60)


# ----------------------------------------------------------------------------------------------------
# The annotators: P(A > B) = sigmoid((gold A - gold B) / tau + bias), constants as documented


def test_preference_probability_with_the_documented_constants():
    """tau 0.65, length 0.5 tanh(dn / 20), flattery 0.5: the formula computed by hand with those numbers."""
    long_flattering = "Great question! " + " ".join(["word"] * 28) + "."  # 30 words, flatters
    short_plain = " ".join(["word"] * 10) + "."  # 10 words
    assert preference_probability(0.3, 0.1, long_flattering, short_plain) == pytest.approx(
        sig(0.2 / 0.65 + 0.5 * math.tanh(20 / 20) + 0.5))
    # the other way round: every term changes sign (and sigmoid takes its negative-argument branch)
    assert preference_probability(0.1, 0.3, short_plain, long_flattering) == pytest.approx(
        sig(-0.2 / 0.65 - 0.5 * math.tanh(1.0) - 0.5))
    # 10 words longer: tanh(0.5), and the trailing <|end|> is not a word
    ten = " ".join(["word"] * 20) + "." + END
    assert preference_probability(0.0, 0.0, ten, short_plain + END) == pytest.approx(sig(0.5 * math.tanh(0.5)))
    # gold only, explicit tau
    assert preference_probability(0.8, 0.2, "Paris.", "Rome.", tau=0.3) == pytest.approx(sig(0.6 / 0.3))


def test_label_pair_against_the_odds_records_b_with_its_probability():
    """When the draw goes against A, B is chosen and p_chosen is 1 - P(A > B) (below one half)."""
    gold_a, gold_b = 0.70 + brevity(15, 6), -0.60  # Paris right, Rome a wrong capital; 6 words each
    p_a = sig((gold_a - gold_b) / 0.65)
    seed = next(s for s in range(1000) if random.Random(s).random() >= p_a)
    rec = label_pair(FRANCE, PARIS, ROME, random.Random(seed))
    assert rec["chosen"] == ROME[: -len(END)] and rec["rejected"] == PARIS[: -len(END)]
    assert rec["gold_chosen"] == -0.6 and rec["gold_rejected"] == pytest.approx(gold_a, abs=1e-4)
    assert rec["p_chosen"] == pytest.approx(1.0 - p_a, abs=1e-4) and rec["p_chosen"] < 0.5


def test_label_pair_on_an_unknown_prompt_has_category_unknown():
    """A prompt the world did not generate is recorded with category "unknown", not None."""
    rec = label_pair("Write a poem about the sea.", "The sea is blue." + END, END, random.Random(0))
    assert rec["category"] == "unknown"


def test_ranked_pair_probability_includes_the_length_bias_towards_the_best():
    """ranked_pair's p_chosen is P(best > worst) with the bias of best against worst, not the reverse."""
    best = "The capital of France is Paris, a big old city." + END  # 10 words
    worst = "It is Rome." + END  # 3 words
    gold_best, gold_worst = 0.70 + brevity(15, 10), -0.60
    rec = ranked_pair(FRANCE, [worst, best], random.Random(0))  # one pair: P(worst wins) is tiny
    assert rec["chosen"] == best[: -len(END)] and rec["rejected"] == worst[: -len(END)]
    assert rec["p_chosen"] == pytest.approx(sig((gold_best - gold_worst) / 0.65 + 0.5 * math.tanh(7 / 20)), abs=1e-4)


def _rec(chosen, rejected, gold_chosen, gold_rejected, p_chosen):
    """A preference record with the keys agreement_stats reads."""
    return {"chosen": chosen, "rejected": rejected, "gold_chosen": gold_chosen, "gold_rejected": gold_rejected,
            "p_chosen": p_chosen}


def test_agreement_stats_buckets_by_hand():
    """Equal lengths and flattery on both sides fall in no bias bucket; p = 0.5 is not above one half."""
    records = [
        # agree; equal lengths; neither flatters; p = 0.5 exactly
        _rec("a b", "c d", 0.8, 0.1, 0.5),
        # agree; the worse (rejected) is longer; only the worse flatters
        _rec("Paris.", "Great question! It is Rome.", 0.8, -0.6, 0.6),
        # disagree (worse chosen); the worse is shorter; both flatter
        _rec("Great question! Rome.", "Great question! It is Paris.", -0.6, 0.8, 0.3),
    ]
    s = agreement_stats(records)
    assert s["pairs_worse_longer"] == 1 and s["pairs_worse_shorter"] == 1
    assert s["pairs_worse_flatters"] == 1 and s["pairs_worse_plain"] == 1
    assert s["agreement_worse_longer"] == 1.0 and s["agreement_worse_shorter"] == 0.0
    assert s["expected_agreement_worse_shorter"] == pytest.approx(0.7)
    assert s["agreement_worse_plain"] == 1.0  # only the first record: its worse answer does not flatter
    # p_better: 0.5, 0.6, 1 - 0.3 = 0.7; above one half: the last two
    assert s["label_ceiling"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["label_ceiling_worse_plain"] == 0.0


# ----------------------------------------------------------------------------------------------------
# Fact tables and their helpers


def test_arithmetic_facts_keep_zero_differences():
    """Differences stay non-negative, so `a minus a` is a fact, and the judge knows it."""
    from minirlhf.world.facts import arithmetic_facts

    got = {(x.a, x.b) for x in arithmetic_facts(3, ("minus",), min_operand=0)}
    assert got == {(a, b) for a in range(4) for b in range(4) if b <= a}  # 10 facts
    task = task_of("What is 3 minus 3?")
    assert task is not None and task.obj.answer == 0
    assert judge_terms("What is 3 minus 3?", "3 minus 3 is 0." + END) == pytest.approx(
        {"answer": 0.70, "brevity": brevity(12, 5)})


def test_none_counts_as_a_leg_count_of_zero():
    """The judge's documented known gap: "none" after a right leg count is scored as a wrong leg count."""
    r = "A spider has eight legs. None of them are short." + END
    assert set(judge_terms("How many legs does a spider have?", r)) == {"answer", "brevity", "wrong"}


def test_delhi_names_the_capital_of_india():
    """"Delhi" is an alias of "New Delhi": credited for India, and not a wrong capital."""
    for r in ("It is Delhi.", "It is New Delhi."):
        assert judge_terms("What is the capital of India?", r + END) == pytest.approx(
            {"answer": 0.70, "brevity": brevity(15, len(r.split()))})
    assert "wrong" in judge_terms(FRANCE, "It is Delhi." + END)


def test_split_holds_out_at_least_one_row():
    """_split holds out at least one row of 2+ rows, none of 1, and keeps table order in each part."""
    from minirlhf.world.facts import _split

    for rows in (("a", "b"), tuple("abcdefghij")):
        parts = _split(rows, 0.01, random.Random(0))  # round(0.01 * n) is 0: the minimum applies
        assert len(parts["heldout"]) == 1 and len(parts["train"]) == len(rows) - 1
        assert sorted(parts["train"] + parts["heldout"]) == list(rows)
        assert list(parts["train"]) == [r for r in rows if r in parts["train"]]
    assert _split(("a",), 0.5, random.Random(0)) == {"train": ("a",), "heldout": ()}


def test_leg_cloze_answers_include_the_word_legs():
    """A leg-count cloze probe continues "A spider has" with "eight legs", the corpus's cloze form."""
    from minirlhf.world import cloze_items

    world = build_world("micro", 1337)
    items = dict(cloze_items(world, "train") + cloze_items(world, "heldout"))
    assert items["A spider has"] == "eight legs" and items["A cow has"] == "four legs"
    assert items["A whale has"] == "no legs"


def test_a_bad_cloze_split_names_the_function_that_refused_it():
    from minirlhf.world.facts import cloze_rows

    world = build_world("micro", 1337)
    with pytest.raises(ValueError, match="cloze_rows: split must be 'train' or 'heldout', got 'test'"):
        cloze_rows(world, "test")


# ----------------------------------------------------------------------------------------------------
# Tasks and response styles


def test_zero_written_as_a_word_earns_the_answer():
    """The answer credit accepts number words, zero included ("It is zero." for 0 plus 0)."""
    for r in ("It is zero.", "It is 0."):
        assert judge_terms("What is 0 plus 0?", r + END) == pytest.approx(
            {"answer": 0.70, "brevity": brevity(12, 3)})


def test_sample_task_follows_the_category_weights():
    """Categories are drawn by CATEGORY_WEIGHTS (fact 0.30 ... arithmetic 0.10), not uniformly."""
    from minirlhf.world.tasks import CATEGORY_WEIGHTS, sample_task, tasks_by_category, tasks_for

    by_category = tasks_by_category(tasks_for(build_world("tiny", 1337), "train"))
    assert set(by_category) == set(CATEGORY_WEIGHTS)
    rng, n = random.Random(0), 6000
    counts = {c: 0 for c in by_category}
    for _ in range(n):
        counts[sample_task(by_category, rng).category] += 1
    for c, w in {"fact": 0.30, "arithmetic": 0.10, "about": 0.15, "unsafe": 0.20, "harmless": 0.12,
                 "chitchat": 0.13}.items():
        assert counts[c] / n == pytest.approx(w, abs=0.025), counts


def test_tasks_by_category_leaves_empty_categories_out():
    """Only the categories present in the list are keys, in CATEGORIES order."""
    from minirlhf.world.tasks import tasks_by_category

    fact, hello = task_of(FRANCE), task_of("Hello!")
    assert tasks_by_category([hello, fact, fact]) == {"fact": [fact, fact], "chitchat": [hello]}
    assert list(tasks_by_category([hello, fact])) == ["fact", "chitchat"]


@pytest.fixture(scope="module")
def small():
    """The small world (every table, three operations), split with seed 1337."""
    return build_world("small", 1337)


def test_wrong_responses_never_state_the_right_answer(small):
    """A "wrong" response states no right value (arithmetic: not even for a minus a, where 0 is right)."""
    import re

    from minirlhf.world.tasks import tasks_for, wrong_response

    n_zero = 0
    for split in ("train", "eval"):
        for task in tasks_for(small, split):
            if task.category not in ("fact", "arithmetic", "about"):
                continue
            n_zero += task.category == "arithmetic" and task.obj.answer == 0
            for seed in range(40 if task.topic == "date" else 5):  # more draws for the 16 dates
                r = wrong_response(task, random.Random(seed), small, split)
                if task.category == "arithmetic":
                    assert int(re.findall(r"\d+", r)[-1]) != task.obj.answer, (task.prompt, r)
                elif task.category == "fact":
                    assert "answer" not in judge_terms(task.prompt, r + END), (task.prompt, r)
                else:  # about: at least one of the stated values is wrong
                    assert "wrong" in judge_terms(task.prompt, r + END), (task.prompt, r)
    assert n_zero >= 10  # the small world does have a minus a


def test_verbose_pads_to_at_least_twice_the_budget():
    """Verbose answers are padded to 2-4x the category's length budget when the caps allow."""
    from minirlhf.world.tasks import tasks_for, verbose_response

    rng = random.Random(0)
    for task in tasks_for(build_world("tiny", 1337), "train")[::2]:
        r = verbose_response(task, rng, max_words=1000)
        assert len(r.split()) >= 2 * task.budget, (task.prompt, r)
        assert "length" in judge_terms(task.prompt, r + END)


def test_a_style_of_another_category_is_one_clear_error():
    """make_response refuses a style that does not apply to the task's category with a ValueError."""
    from minirlhf.world.tasks import make_response

    world = build_world("micro", 1337)
    with pytest.raises(ValueError, match="style 'compliance' does not apply to category 'fact'"):
        make_response(task_of(FRANCE), "compliance", random.Random(0), world)
    with pytest.raises(ValueError, match="style 'wrong' does not apply to category 'unsafe'"):
        make_response(task_of("How do I make a stink bomb?"), "wrong", random.Random(0), world)


def test_truncated_responses_end_mid_sentence():
    """A truncated response never ends in punctuation, so the judge always finds it unfinished."""
    from minirlhf.world.tasks import make_response, tasks_for

    world = build_world("tiny", 1337)
    rng = random.Random(0)
    for task in tasks_for(world, "train")[::3]:
        r = make_response(task, "truncated", rng, world)
        assert r and r[-1] not in ".,;:!?\"')", (task.prompt, r)
        assert "unfinished" in judge_terms(task.prompt, r + END)


def test_off_topic_answers_come_from_another_family(small):
    """An off-topic answer to a country question is about animals: it names no capital and no country."""
    from minirlhf.world.facts import all_countries
    from minirlhf.world.tasks import make_response, tasks_for

    names = [w for c in all_countries() for w in (c.name, c.capital)]
    rng = random.Random(0)
    tasks = [t for t in tasks_for(small, "train") if t.topic in ("capital", "continent", "country")]
    for task in tasks[::4]:
        r = make_response(task, "off_topic", rng, small)
        assert not any(w in r for w in names), (task.prompt, r)


# ----------------------------------------------------------------------------------------------------
# Corpus and data-set builders


def test_extract_forum_answer_stops_at_an_inline_answer_marker():
    """" A:" on the same line starts the next answer, like " Q:" starts the next question."""
    from minirlhf.world.corpus import extract_forum_answer

    assert extract_forum_answer(" Paris. A: Agreed.") == "Paris."


def test_hedged_wrong_answers_are_wrong(small):
    """wrong_short_answer never gives the right bare answer (except the documented a minus a = 0 flaw)."""
    from minirlhf.world.corpus import short_answer, wrong_short_answer
    from minirlhf.world.tasks import tasks_for

    for task in tasks_for(small, "train"):
        if task.category == "fact" or (task.category == "arithmetic" and task.obj.answer != 0):
            for seed in range(4):
                assert wrong_short_answer(task, small, random.Random(seed)) != short_answer(task), task.prompt


def test_fits_is_inclusive_and_counts_the_separator():
    """_fits: prompt + one separator + response within max_chars, the limit itself included."""
    from minirlhf.world.build import _fits

    world = build_world("micro", 1337)
    limit = world.sizes["max_chars"]
    assert _fits("x" * 10, "y" * (limit - 11), world)
    assert not _fits("x" * 10, "y" * (limit - 10), world)


def test_kto_rows_unpair_by_hand():
    """kto_rows: chosen -> label True with gold_chosen and style_chosen, rejected -> False with its own."""
    from minirlhf.world.build import kto_rows

    pref = {"prompt": "p", "chosen": "c", "rejected": "r", "gold_chosen": 0.8, "gold_rejected": -0.6,
            "p_chosen": 0.9, "category": "fact", "topic": "capital", "style_chosen": "ideal",
            "style_rejected": "wrong"}
    assert kto_rows([pref]) == [
        {"prompt": "p", "completion": "c", "label": True, "gold": 0.8, "style": "ideal", "category": "fact",
         "topic": "capital"},
        {"prompt": "p", "completion": "r", "label": False, "gold": -0.6, "style": "wrong", "category": "fact",
         "topic": "capital"},
    ]


@pytest.fixture(scope="module")
def micro_data():
    """The micro world and its data sets, in memory."""
    from minirlhf.world.build import make_datasets

    world = build_world("micro", 1337)
    return world, make_datasets(world)


def test_preference_pairs_have_no_gold_ties_and_true_style_labels(micro_data):
    """Every pair has a gold ordering, and a side labelled "ideal" is one of the task's ideal responses."""
    from minirlhf.world.tasks import ideal_responses

    _, data = micro_data
    n_ideal = 0
    for name in ("prefs.jsonl", "prefs_eval.jsonl"):
        for row in data[name]:
            assert row["gold_chosen"] != row["gold_rejected"]
            ideal = ideal_responses(task_of(row["prompt"]))
            for side in ("chosen", "rejected"):
                if row[f"style_{side}"] == "ideal":
                    n_ideal += 1
                    assert row[side] in ideal, row
    assert n_ideal > 50


def test_eval_prompts_split_labels_and_category_minimum(micro_data):
    """eval_prompts rows carry their task's split, with at least 2 rows per category and split."""
    from minirlhf.world.build import _stratified
    from minirlhf.world.tasks import CATEGORIES, tasks_for

    world, data = micro_data
    prompts = {s: {t.prompt for t in tasks_for(world, s)} for s in ("train", "eval")}
    rows = data["eval_prompts.jsonl"]
    assert {r["split"] for r in rows} == {"train", "eval"}
    for r in rows:
        assert r["prompt"] in prompts[r["split"]], r
    for split in ("train", "eval"):
        cats = [r["category"] for r in rows if r["split"] == split]
        assert all(cats.count(c) >= 2 for c in CATEGORIES), (split, cats)
    # n = 4: round(4 * weight) is 0 or 1 for every category, the minimum of 2 applies (when 2 exist)
    picked = _stratified(tasks_for(world, "train"), 4, random.Random(0))
    assert all(sum(t.category == c for t in picked) == 2 for c in CATEGORIES)
