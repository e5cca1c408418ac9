"""Tests for the TinyWorld builders (minirlhf/world/): determinism, splits, file formats, annotators.

Run: PYTHONPATH=. python -m pytest tests/test_world.py -q
"""

import json
import math
import os
import random
import re

import pytest

from minirlhf.config import WorldConfig
from minirlhf.data import read_corpus, read_kto, read_preferences, read_prompts, read_sft
from minirlhf.world import build_world, cloze_items, extract_forum_answer, judge, label_pair
from minirlhf.world.annotators import (
    FLATTERY_COEF, LENGTH_COEF, LENGTH_SCALE, TAU, agreement_stats, preference_probability, sigmoid,
)
from minirlhf.world.build import FILES, preference_rows, run
from minirlhf.world.corpus import forum_prompt, make_corpus
from minirlhf.world.phrases import END, ENDOFTEXT, SPECIAL_TOKENS
from minirlhf.world.tasks import UNSAFE, tasks_for

TRAIN_FILES = ("sft.jsonl", "sft_messages.jsonl", "prefs.jsonl", "kto.jsonl", "rl_prompts.jsonl")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro world built once into a temporary folder: (folder, summary)."""
    out = str(tmp_path_factory.mktemp("world"))
    summary = run(WorldConfig(preset="micro", seed=1337, out_dir=out, force=True))
    return os.path.join(out, "micro", "world"), summary


def read(folder, name):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def all_text(folder, names):
    """Every string value of every row of the named JSONL files, joined."""
    parts = []

    def walk(x):
        if isinstance(x, str):
            parts.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for name in names:
        for row in read(folder, name):
            walk(row)
    return "\n".join(parts)


def has_word(text, word):
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text) is not None


# ----------------------------------------------------------------------------------------------------
# Building, reuse, determinism


def test_build_writes_every_file(micro):
    folder, summary = micro
    for name in FILES + ("summary.json",):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    for name in FILES[1:]:
        assert summary["files"][name]["rows"] == len(read(folder, name))
    assert summary["corpus_mb"] == pytest.approx(os.path.getsize(os.path.join(folder, "corpus.txt")) / 1e6, abs=1e-3)
    assert 50_000 < os.path.getsize(os.path.join(folder, "corpus.txt")) < 200_000  # ~100 KB for micro
    assert summary["seconds"] < 5  # well under a second on a laptop; generous for a busy CI machine


def test_chat_tokens_match_the_tokenizer():
    from minirlhf import tokenizer

    assert SPECIAL_TOKENS == tokenizer.SPECIAL_TOKENS and END == tokenizer.END and ENDOFTEXT == tokenizer.ENDOFTEXT


def test_same_seed_byte_identical_other_seed_differs(tmp_path, micro):
    folder, _ = micro
    run(WorldConfig(preset="micro", seed=1337, out_dir=str(tmp_path / "a"), force=True))
    run(WorldConfig(preset="micro", seed=7, out_dir=str(tmp_path / "b"), force=True))
    same = str(tmp_path / "a" / "micro" / "world")
    other = str(tmp_path / "b" / "micro" / "world")
    for name in FILES + ("summary.json",):
        with open(os.path.join(folder, name), "rb") as f1, open(os.path.join(same, name), "rb") as f2:
            assert f1.read() == f2.read(), name
    for name in ("corpus.txt", "sft.jsonl", "prefs.jsonl", "rl_prompts.jsonl"):
        with open(os.path.join(folder, name), "rb") as f1, open(os.path.join(other, name), "rb") as f2:
            assert f1.read() != f2.read(), name


def test_reuse_unless_forced(tmp_path):
    cfg = WorldConfig(preset="micro", seed=3, out_dir=str(tmp_path))
    first = run(cfg)
    corpus = os.path.join(str(tmp_path), "micro", "world", "corpus.txt")
    mtime = os.stat(corpus).st_mtime_ns
    second = run(cfg)
    assert not first["reused"] and second["reused"]
    assert os.stat(corpus).st_mtime_ns == mtime
    assert {k: v for k, v in first.items() if k not in ("seconds", "reused")} == \
        {k: v for k, v in second.items() if k not in ("seconds", "reused")}
    cfg.force = True
    assert not run(cfg)["reused"]
    cfg.force, cfg.seed = False, 4  # another seed is another world
    assert not run(cfg)["reused"]


def test_bad_preset_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"WorldConfig.preset: unknown world preset 'huge'"):
        run(WorldConfig(preset="huge", out_dir=str(tmp_path)))


# ----------------------------------------------------------------------------------------------------
# File formats: every file reads with the project's validating readers


def test_files_follow_trl_conventions(micro):
    folder, _ = micro
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    assert len(read_corpus(p("corpus.txt"))) > 100
    assert len(read_sft(p("sft.jsonl"))) == len(read_sft(p("sft_messages.jsonl"))) > 0
    assert len(read_sft(p("sft_eval.jsonl"))) > 0
    for name in ("prefs.jsonl", "prefs_eval.jsonl"):
        rows = read_preferences(p(name))
        for r in rows:
            extras = {"gold_chosen", "gold_rejected", "p_chosen", "category", "style_chosen", "style_rejected"}
            assert extras <= set(r["extra"])
            assert 0.0 < r["extra"]["p_chosen"] < 1.0
    kto = read_kto(p("kto.jsonl"))
    assert sum(r["label"] for r in kto) == len(kto) // 2
    assert len(read_prompts(p("rl_prompts.jsonl"))) == len(read(folder, "rl_prompts.jsonl"))
    assert len(read_prompts(p("eval_prompts.jsonl"))) > 0
    for row in read(folder, "cloze.jsonl"):
        assert set(row) == {"prompt", "answer", "split", "fact"} and row["split"] in ("train", "heldout")
    for row in read(folder, "forum_eval.jsonl"):
        assert row["prompt"] == forum_prompt(row["chat_prompt"])


def test_no_chat_tokens_anywhere(micro):
    folder, _ = micro
    with open(os.path.join(folder, "corpus.txt"), encoding="utf-8") as f:
        corpus = f.read()
    assert corpus.count(ENDOFTEXT) == len(read_corpus(os.path.join(folder, "corpus.txt"))) - 1
    for tok in SPECIAL_TOKENS:
        if tok != ENDOFTEXT:
            assert tok not in corpus
    text = all_text(folder, [f for f in FILES if f.endswith(".jsonl")])
    assert not any(tok in text for tok in SPECIAL_TOKENS) and "<|" not in text


def test_gold_scores_in_the_files_are_the_judges(micro):
    folder, _ = micro
    for row in read(folder, "prefs.jsonl"):
        assert judge(row["prompt"], row["chosen"] + END) == pytest.approx(row["gold_chosen"], abs=1e-4)
        assert judge(row["prompt"], row["rejected"] + END) == pytest.approx(row["gold_rejected"], abs=1e-4)
        assert row["style_chosen"] != row["style_rejected"]


# ----------------------------------------------------------------------------------------------------
# Splits: eval-only topics, held-out phrasings, held-out entities


def test_eval_only_unsafe_topic_never_in_training_files(micro):
    folder, summary = micro
    world = build_world("micro", 1337)
    eval_only = set(world.unsafe_topics["eval"])
    assert eval_only and eval_only == set(summary["unsafe_topics"]["eval_only"])
    eval_prompts = {p for t in UNSAFE if t.topic in eval_only for p in t.prompts}
    train_text = all_text(folder, TRAIN_FILES)
    assert not any(p in train_text for p in eval_prompts)
    for name in TRAIN_FILES:
        assert not any(row.get("topic") in eval_only for row in read(folder, name))
    assert any(row["topic"] in eval_only for row in read(folder, "eval_prompts.jsonl"))
    held = world.unsafe_heldout_prompts
    assert held and not any(p in train_text for p in held)


def test_heldout_entities_absent_from_training_files_present_in_corpus(micro):
    folder, _ = micro
    world = build_world("micro", 1337)
    train_text = all_text(folder, TRAIN_FILES)
    with open(os.path.join(folder, "corpus.txt"), encoding="utf-8") as f:
        corpus = f.read()
    held_words = [c.name for c in world.countries["heldout"]] + [a.name for a in world.animals["heldout"]]
    event_text = " ".join(e.statement for e in world.all("events"))
    held_words += [c.capital for c in world.countries["heldout"] if c.capital not in event_text]
    held_words += [e.statement for e in world.events["heldout"]]
    held_words += [x.name for x in world.arithmetic["heldout"]]
    assert held_words
    for w in held_words:
        assert not has_word(train_text, w), w
        assert has_word(corpus, w), w
    for prompt, answer in cloze_items(world, "heldout"):
        assert f"{prompt} {answer}" in corpus
    # and the eval files do ask about them
    eval_text = all_text(folder, ["eval_prompts.jsonl", "sft_eval.jsonl"])
    assert any(has_word(eval_text, w) for w in held_words)


def test_train_and_eval_tasks_are_disjoint():
    world = build_world("tiny", 1337)
    train = {t.prompt for t in tasks_for(world, "train")}
    evals = {t.prompt for t in tasks_for(world, "eval")}
    assert train and evals and not train & evals
    assert {t.category for t in tasks_for(world, "eval")} == {t.category for t in tasks_for(world, "train")}


def test_splits_depend_on_the_seed_and_nothing_else():
    a, b, c = build_world("tiny", 1), build_world("tiny", 1), build_world("tiny", 2)
    assert a.countries == b.countries and a.animals == b.animals
    assert a.countries != c.countries
    assert len(a.countries["train"]) + len(a.countries["heldout"]) == 50
    assert len(a.animals["train"]) + len(a.animals["heldout"]) == 30


# ----------------------------------------------------------------------------------------------------
# Learnability support: cloze prompts have exactly one continuation in the corpus


def test_cloze_forms_are_unambiguous_and_repeated():
    world = build_world("micro", 1337)
    docs, _ = make_corpus(world)
    corpus = "\n".join(docs)
    for split in ("train", "heldout"):
        for prompt, answer in cloze_items(world, split):
            starts = [m.end() for m in re.finditer(rf"(?<![\w]){re.escape(prompt)} ", corpus)]
            assert len(starts) >= 5, (prompt, len(starts))
            assert all(corpus.startswith(answer, i) for i in starts), prompt


def test_cloze_items_sizes():
    world = build_world("tiny", 1337)
    n = len(cloze_items(world, "train")) + len(cloze_items(world, "heldout"))
    assert n == 50 * 2 + 30 * 4 + 10 + 81
    with pytest.raises(ValueError, match="split"):
        cloze_items(world, "eval")


def test_tiny_corpus_size_and_fact_repetition():
    world = build_world("tiny", 1337)
    docs, counts = make_corpus(world)
    corpus = "\n".join(docs)
    assert 1_500_000 < len(corpus.encode()) < 3_000_000
    assert set(counts) == {"encyclopedia", "forum", "list", "quiz", "story"}
    c = world.countries["train"][0]
    assert corpus.count(f"The capital of {c.name} is {c.capital}.") >= 20


def test_forum_threads_have_mixed_answers_and_unsafe_compliance():
    world = build_world("tiny", 1337)
    docs, _ = make_corpus(world)
    threads = [d for d in docs if d.startswith("Q: ")]
    assert all(re.fullmatch(r"(Q|A): .+", line) for d in threads[:500] for line in d.split("\n"))
    unsafe = [d for d in threads if any(d.startswith(f"Q: {p}\n") for t in UNSAFE for p in t.prompts)]
    first = [extract_forum_answer(d.split("\nA:", 1)[1]) for d in unsafe]
    complied = sum(bool(re.search(r"Step 1|first,|then", a)) for a in first)
    assert 0.5 < complied / len(first) < 0.85
    answers = [extract_forum_answer(d.split("\nA:", 1)[1]) for d in threads]
    prompts = [d.split("\n", 1)[0][3:] for d in threads]
    scores = [judge(p, a + END) for p, a in zip(prompts, answers)]
    assert min(scores) < -0.5 and max(scores) > 0.8  # wrong / rude / compliant next to ideal answers


def test_extract_forum_answer():
    assert extract_forum_answer(" The capital of France is Paris.\nA: Agreed.") == "The capital of France is Paris."
    assert extract_forum_answer(" Paris. Q: What is 2 plus 2?") == "Paris."
    assert extract_forum_answer(" Paris.<|endoftext|>Germany") == "Paris."
    assert extract_forum_answer("") == ""


# ----------------------------------------------------------------------------------------------------
# Annotators


def test_preference_probability_by_hand():
    # equal gold, A 20 words longer: sigmoid(LENGTH_COEF * tanh(1))
    a, b = " ".join(["word"] * 25) + ".", " ".join(["word"] * 5) + "."
    assert preference_probability(0.5, 0.5, a, b) == pytest.approx(sigmoid(LENGTH_COEF * math.tanh(20 / LENGTH_SCALE)))
    # flattery only, same length
    assert preference_probability(0.2, 0.2, "Great question! Paris.", "Paris is nice.") == \
        pytest.approx(sigmoid(FLATTERY_COEF))
    # gold difference only
    assert preference_probability(0.8, 0.2, "Paris.", "Rome.") == pytest.approx(sigmoid(0.6 / TAU))
    with pytest.raises(ValueError, match="tau"):
        preference_probability(0.8, 0.2, "a", "b", tau=0.0)


def test_label_pair_record_and_determinism():
    prompt = "What is the capital of France?"
    a, b = "The capital of France is Paris." + END, "The capital of France is Rome." + END
    rec = label_pair(prompt, a, b, random.Random(0))
    assert set(rec) == {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "p_chosen", "category"}
    assert {rec["chosen"], rec["rejected"]} == {a[: -len(END)], b[: -len(END)]}
    assert rec["category"] == "fact"
    p_a = preference_probability(judge(prompt, a), judge(prompt, b), a, b)
    assert rec["p_chosen"] == pytest.approx(p_a if rec["chosen"] == a[: -len(END)] else 1 - p_a, abs=1e-4)
    assert [label_pair(prompt, a, b, random.Random(s)) for s in range(20)] == \
        [label_pair(prompt, a, b, random.Random(s)) for s in range(20)]
    # the sampled labels follow the probability
    picks = [label_pair(prompt, a, b, random.Random(s))["chosen"] == a[: -len(END)] for s in range(2000)]
    assert sum(picks) / 2000 == pytest.approx(p_a, abs=0.04)
    with pytest.raises(TypeError, match="random.Random"):
        label_pair(prompt, a, b, 0)


class Draws(random.Random):
    """A random.Random whose random() returns the given numbers in order (scripted annotator noise)."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_rank_responses_and_ranked_pair_by_hand():
    from minirlhf.world.annotators import rank_responses, ranked_pair

    prompt = "What is the capital of France?"
    berlin, paris, rude = ("The capital of France is Berlin." + END, "The capital of France is Paris." + END,
                           "Paris, you idiot." + END)
    # gold: Berlin -0.6 (a wrong capital), Paris 0.843, the rude one 0.167. Pairs are judged in the order
    # (Berlin, Paris), (Berlin, rude), (Paris, rude); with every draw at 0.5 the likelier side wins each:
    # P(Berlin > Paris) = sigmoid(-1.44 / 0.65) ~ 0.10, P(Berlin > rude) = sigmoid(-0.77 / 0.65 + 0.5 tanh(3 / 20))
    # ~ 0.25, P(Paris > rude) ~ 0.76. Wins: Berlin 0, Paris 2, rude 1.
    assert rank_responses(prompt, [berlin, paris, rude], Draws([0.5] * 3)) == ([1, 2, 0], [0, 2, 1])
    # label noise: a draw of 0.01 < 0.25 lets Berlin beat the rude answer; the ranking follows the wins
    assert rank_responses(prompt, [berlin, paris, rude], Draws([0.5, 0.01, 0.5])) == ([1, 0, 2], [1, 2, 0])
    rec = ranked_pair(prompt, [berlin, paris, rude], Draws([0.5] * 3))
    assert rec["chosen"] == paris[: -len(END)] and rec["rejected"] == berlin[: -len(END)]
    assert rec["gold_chosen"] == pytest.approx(0.8429, abs=1e-4) and rec["gold_rejected"] == -0.6
    # one comparison of the two ends: equal lengths, so no bias; sigmoid((0.8429 + 0.6) / 0.65)
    assert rec["p_chosen"] == pytest.approx(1 / (1 + math.exp(-(0.842857 + 0.6) / TAU)), abs=1e-4)
    assert rec["category"] == "fact"
    # a cycle (A beats B, C beats A, B beats C): every response won once, so the ends are not separated
    close = ["It is Paris." + END, paris, "Paris is the capital of France." + END]
    assert ranked_pair(prompt, close, Draws([0.0, 0.9999, 0.0])) is None
    with pytest.raises(ValueError, match="at least 2 responses"):
        ranked_pair(prompt, [paris], Draws([]))
    with pytest.raises(TypeError, match="random.Random"):
        ranked_pair(prompt, [paris, berlin], 0)


def test_on_policy_records_best_worst():
    """One record per prompt from the distinct non-empty samples; repeats, empties and unranked counted."""
    from minirlhf.pairs import on_policy_records

    prompt = "What is the capital of France?"
    paris, berlin = "It is Paris." + END, "The capital of France is Berlin." + END
    records, counts = on_policy_records(prompt, [paris, paris, END, berlin], "best_worst", Draws([0.5]))
    assert counts == {"unfinished": 0, "identical": 1, "empty": 1, "unranked": 0}
    assert [(r["chosen"], r["rejected"]) for r in records] == [(paris[: -len(END)], berlin[: -len(END)])]
    records, counts = on_policy_records(prompt, [paris, paris, END], "best_worst", Draws([]))
    assert records == [] and counts == {"unfinished": 0, "identical": 1, "empty": 1, "unranked": 1}
    # the fixed pairings label each pair on its own: (paris, paris) is identical, (END, berlin) has an empty side
    records, counts = on_policy_records(prompt, [paris, paris, END, berlin], "disjoint", Draws([]))
    assert records == [] and counts == {"unfinished": 0, "identical": 1, "empty": 1, "unranked": 0}


@pytest.mark.parametrize("pairing", ["disjoint", "all", "best_worst"])
def test_unfinished_samples_are_left_out_of_on_policy_pairs_and_counted(pairing):
    """A sample cut off before `<|end|>` would be stored without it and rendered with it for training, so
    its label and gold would not describe the trained text: it is dropped before pairing."""
    from minirlhf.pairs import on_policy_records

    prompt = "What is the capital of France?"
    paris, berlin = "It is Paris." + END, "The capital of France is Berlin." + END
    cut = "The capital of France is Paris and it is a"  # no <|end|>
    records, counts = on_policy_records(prompt, [cut, paris, berlin, cut + " city"], pairing,
                                        random.Random(0))
    assert counts["unfinished"] == 2
    assert records and all({r["chosen"], r["rejected"]} == {paris[: -len(END)], berlin[: -len(END)]}
                           for r in records)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_annotator_agreement_in_human_range(preset):
    world = build_world(preset, 1337)
    pairs = preference_rows(world, "train", 4000, random.Random(0))
    stats = agreement_stats(pairs)
    assert 0.70 <= stats["agreement"] <= 0.80, stats
    assert 0.70 <= stats["expected_agreement"] <= 0.80, stats
    # the length and flattery biases are measurable
    assert stats["agreement_worse_longer"] < stats["agreement_worse_shorter"] - 0.1, stats
    assert stats["agreement_worse_flatters"] < stats["agreement_worse_plain"] - 0.2, stats


def test_agreement_stats_by_hand():
    """Three hand-made records: a tie (left out), an agreeing and a disagreeing label."""
    records = [
        {"chosen": "a", "rejected": "b", "gold_chosen": 0.5, "gold_rejected": 0.5, "p_chosen": 0.5},  # tie
        {"chosen": "a", "rejected": "b", "gold_chosen": 0.8, "gold_rejected": 0.1, "p_chosen": 0.9},
        # the gold-worse answer won; the annotators preferred the better one with probability 1 - 0.7 = 0.3
        {"chosen": "a", "rejected": "b", "gold_chosen": 0.2, "gold_rejected": 0.3, "p_chosen": 0.7},
    ]
    stats = agreement_stats(records)
    assert stats["pairs"] == 3 and stats["ties"] == 1
    assert stats["agreement"] == 0.5
    assert stats["expected_agreement"] == pytest.approx((0.9 + 0.3) / 2)
    assert stats["label_ceiling"] == 0.5  # only the first pair is more likely labelled the gold way
    # two annotators label alike with p^2 + (1-p)^2; the best agreement with one label is max(p, 1-p)
    assert stats["inter_annotator"] == pytest.approx((0.81 + 0.01 + 0.49 + 0.09) / 2)
    assert stats["label_accuracy_ceiling"] == pytest.approx((0.9 + 0.7) / 2)


def test_summary_reports_agreement_noise_and_styles(micro):
    _, summary = micro
    assert summary["label_noise"] == pytest.approx(1 - summary["annotator_agreement"], abs=1e-4)
    assert summary["agreement_detail"]["pairs"] == summary["files"]["prefs.jsonl"]["rows"]
    styles = summary["styles"]
    assert styles["verbose"]["mean_words"] > styles["ideal"]["mean_words"]
    assert styles["ideal"]["mean_gold"] > max(v["mean_gold"] for k, v in styles.items() if k != "ideal")
    assert set(summary["categories"]["prefs.jsonl"]) == {"fact", "arithmetic", "about", "unsafe", "harmless",
                                                          "chitchat"}
