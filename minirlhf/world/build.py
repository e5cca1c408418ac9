"""`minirlhf world`: write the TinyWorld's corpus and data sets to out/<preset>/world/.

    minirlhf world --preset tiny                  # or, in Python:
    from minirlhf.world.build import run
    from minirlhf.config import WorldConfig
    summary = run(WorldConfig(preset="tiny"))     # reuses the files when nothing changed

Files (JSONL in the Hugging Face TRL conventions, extra keys allowed; every text is plain, without
chat tokens; the chat template adds `<|user|>`, `<|assistant|>` and `<|end|>` when it renders them):

| file               | rows                                         | keys                                      |
|--------------------|----------------------------------------------|-------------------------------------------|
| corpus.txt         | pretraining documents, split by              | (plain text)                              |
|                    | `<|endoftext|>`                              |                                           |
| sft.jsonl          | ideal demonstrations on train prompts        | prompt, completion, category, topic       |
| sft_messages.jsonl | the same demonstrations as conversations     | messages, category, topic                 |
| sft_eval.jsonl     | ideal demonstrations on eval prompts         | prompt, completion, category, topic,      |
|                    |                                              | split                                     |
| prefs.jsonl        | labelled pairs on train prompts              | prompt, chosen, rejected, gold_chosen,    |
|                    |                                              | gold_rejected, p_chosen, category, topic, |
|                    |                                              | style_chosen, style_rejected, split       |
| prefs_eval.jsonl   | the same on new draws of train prompts (half:| as prefs.jsonl                            |
|                    | most of these prompts are in prefs.jsonl too,|                                           |
|                    | mostly with other responses) and on eval     |                                           |
|                    | prompts (half)                               |                                           |
| kto.jsonl          | prefs.jsonl unpaired (chosen -> true)        | prompt, completion, label, gold, style,   |
|                    |                                              | category, topic                           |
| rl_prompts.jsonl   | train prompts for PPO / GRPO                 | prompt, category, topic, split            |
| eval_prompts.jsonl | eval prompts (and a third of train prompts)  | prompt, category, topic, split            |
| cloze.jsonl        | fact cloze probes for the base model         | prompt, answer, split (train / heldout),  |
|                    |                                              | fact                                      |
| forum_eval.jsonl   | questions in the corpus's forum format       | prompt ("Q: ...\\nA:"), chat_prompt,      |
|                    |                                              | category, topic, split                    |
| summary.json       | counts per file and category, annotator agreement, label noise, words and gold per style |

Assistant texts (completion, chosen, rejected) never contain `<|end|>`: every templated response is a
complete turn (the "truncated" style stops mid-sentence, but the turn is still closed), so the gold
scores stored with them are `judge(prompt, text + "<|end|>")`, the score of the conversation as the
chat template renders it.

Splits: "train" prompts mention only train entities and train topics; "eval" prompts are about
held-out entities, held-out phrasings and eval-only unsafe topics. Preference pairs are two templated
responses of different styles (tasks.py) labelled by the simulated annotators (annotators.py); pairs
sampled from a model go through the same `label_pair`.

Reuse: the folder is rebuilt only when the preset, the seed or the world's source code changed (or
with `force`); the key is stored in summary.json. The same seed gives byte-identical files (the
returned summary adds the wall time, which the file leaves out for that reason).

Deliberate simplifications: everything is generated in memory, then written (a few MB); files are
written one by one atomically and summary.json last, so an interrupted build is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

from minirlhf.world.annotators import FLATTERY_COEF, LENGTH_COEF, LENGTH_SCALE, TAU, agreement_stats, label_pair
from minirlhf.world.corpus import forum_prompt, make_corpus
from minirlhf.world.facts import World, build_world, cloze_rows, preset_sizes
from minirlhf.world.judge import judge
from minirlhf.world.phrases import END, ENDOFTEXT
from minirlhf.world.tasks import (
    CATEGORY_WEIGHTS, STYLES, Task, ideal_responses, make_response, sample_task, styles_for, tasks_by_category,
    tasks_for,
)

WORLD_VERSION = 1
JSONL_FILES = ("sft.jsonl", "sft_messages.jsonl", "sft_eval.jsonl", "prefs.jsonl", "prefs_eval.jsonl",
               "kto.jsonl", "rl_prompts.jsonl", "eval_prompts.jsonl", "cloze.jsonl", "forum_eval.jsonl")
FILES = ("corpus.txt",) + JSONL_FILES


# ----------------------------------------------------------------------------------------------------
# Data sets


def _rng(world: World, name: str) -> random.Random:
    return random.Random(f"{world.seed}:{name}")


def _fits(prompt: str, response: str, world: World) -> bool:
    """Does prompt + response stay within the preset's character budget (so it fits the context)?"""
    return len(prompt) + 1 + len(response) <= world.sizes["max_chars"]


def fitting_tasks(world: World, split: str) -> list[Task]:
    """The split's tasks whose shortest ideal response fits the preset's budget (all of them but a
    few long unsafe requests on `micro`)."""
    key = ("fitting", split)
    if key not in world.cache:
        world.cache[key] = [t for t in tasks_for(world, split)
                            if _fits(t.prompt, min(ideal_responses(t), key=len), world)]
    return world.cache[key]


def sft_rows(world: World, split: str, n: int, rng: random.Random) -> list[dict]:
    """n demonstrations: a prompt drawn by category weight, one of its ideal responses that fits."""
    by_category = tasks_by_category(fitting_tasks(world, split))
    rows = []
    for _ in range(n):
        task = sample_task(by_category, rng)
        completion = rng.choice([r for r in ideal_responses(task) if _fits(task.prompt, r, world)])
        row = {"prompt": task.prompt, "completion": completion, "category": task.category, "topic": task.topic}
        if split != "train":
            row["split"] = split
        rows.append(row)
    return rows


def pair_for(task: Task, world: World, split: str, rng: random.Random, tries: int = 10) -> dict | None:
    """Two responses of different styles to one task, labelled by an annotator; None if no valid pair
    was drawn in `tries` attempts.

    A draw is valid when the two texts differ, their gold scores differ (a tie has no gold ordering)
    and both fit the preset's character budget.
    """
    styles = styles_for(task.category)
    room = world.sizes["max_chars"] - len(task.prompt) - 1
    for _ in range(tries):
        style_a, style_b = rng.sample(styles, 2)
        a = make_response(task, style_a, rng, world, split, max_chars=room)
        b = make_response(task, style_b, rng, world, split, max_chars=room)
        if (a != b and len(a) <= room and len(b) <= room
                and judge(task.prompt, a + END) != judge(task.prompt, b + END)):
            break
    else:
        return None
    record = label_pair(task.prompt, a + END, b + END, rng)
    a_chosen = record["chosen"] == a
    record.update(topic=task.topic, style_chosen=style_a if a_chosen else style_b,
                  style_rejected=style_b if a_chosen else style_a, split=split)
    return record


def preference_rows(world: World, split: str, n: int, rng: random.Random) -> list[dict]:
    """n labelled pairs on prompts drawn by category weight (a prompt without a valid pair is redrawn)."""
    by_category = tasks_by_category(fitting_tasks(world, split))
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n and attempts < 20 * n:
        attempts += 1
        record = pair_for(sample_task(by_category, rng), world, split, rng)
        if record is not None:
            rows.append(record)
    if len(rows) == n:
        return rows
    raise RuntimeError(f"could only draw {len(rows)} of {n} valid preference pairs for the {split} split "
                       f"of preset {world.preset!r}; is max_chars ({world.sizes['max_chars']}) too small?")


def kto_rows(prefs: list[dict]) -> list[dict]:
    """Unpaired examples from labelled pairs (as TRL's unpair_preference_dataset): chosen -> true."""
    rows = []
    for p in prefs:
        for key, label in (("chosen", True), ("rejected", False)):
            rows.append({"prompt": p["prompt"], "completion": p[key], "label": label, "gold": p[f"gold_{key}"],
                         "style": p[f"style_{key}"], "category": p["category"], "topic": p["topic"]})
    return rows


def _stratified(tasks: list[Task], n: int, rng: random.Random) -> list[Task]:
    """About n distinct tasks spread over categories by CATEGORY_WEIGHTS (every category at least 2)."""
    by_category = tasks_by_category(tasks)
    out = []
    for cat, items in by_category.items():
        k = min(len(items), max(2, round(n * CATEGORY_WEIGHTS[cat])))
        out += rng.sample(items, k)
    return out


def prompt_rows(tasks: list[Task], split: str) -> list[dict]:
    """One {"prompt", "category", "topic", "split"} record per task, each with the given `split`."""
    return [{"prompt": t.prompt, "category": t.category, "topic": t.topic, "split": split} for t in tasks]


def make_datasets(world: World) -> dict[str, list[dict]]:
    """Every JSONL data set of the world, in memory (file name -> rows)."""
    z = world.sizes
    train, evals = tasks_for(world, "train"), tasks_for(world, "eval")  # prompts alone always fit
    sft = sft_rows(world, "train", z["n_sft"], _rng(world, "sft"))
    prefs = preference_rows(world, "train", z["n_prefs"], _rng(world, "prefs"))
    r = _rng(world, "prefs_eval")
    n_train_half = z["n_prefs_eval"] // 2
    prefs_eval = preference_rows(world, "train", n_train_half, r)
    prefs_eval += preference_rows(world, "eval", z["n_prefs_eval"] - n_train_half, r)
    r = _rng(world, "rl")
    rl = prompt_rows([sample_task(tasks_by_category(train), r) for _ in range(z["n_rl"])], "train")
    r = _rng(world, "eval_prompts")
    n_eval = z["n_eval_prompts"]
    eval_prompts = prompt_rows(_stratified(evals, (2 * n_eval) // 3, r), "eval")
    eval_prompts += prompt_rows(_stratified(train, n_eval // 3, r), "train")
    r = _rng(world, "forum_eval")
    n_forum = z["n_forum_eval"]
    forum_tasks = [("train", _stratified(train, n_forum // 2, r)), ("eval", _stratified(evals, n_forum // 2, r))]
    forum = [dict(prompt=forum_prompt(t.prompt), chat_prompt=t.prompt, category=t.category, topic=t.topic, split=s)
             for s, ts in forum_tasks for t in ts]
    cloze = [{"prompt": p, "answer": a, "split": s, "fact": f}
             for s in ("train", "heldout") for p, a, f in cloze_rows(world, s)]
    return {
        "sft.jsonl": sft,
        "sft_messages.jsonl": [{"messages": [{"role": "user", "content": row["prompt"]},
                                             {"role": "assistant", "content": row["completion"]}],
                                "category": row["category"], "topic": row["topic"]} for row in sft],
        "sft_eval.jsonl": sft_rows(world, "eval", z["n_sft_eval"], _rng(world, "sft_eval")),
        "prefs.jsonl": prefs,
        "prefs_eval.jsonl": prefs_eval,
        "kto.jsonl": kto_rows(prefs),
        "rl_prompts.jsonl": rl,
        "eval_prompts.jsonl": eval_prompts,
        "cloze.jsonl": cloze,
        "forum_eval.jsonl": forum,
    }


# ----------------------------------------------------------------------------------------------------
# Summary


def style_stats(prefs: list[dict]) -> dict[str, dict]:
    """Count, mean length in words and mean gold score of each response style in preference pairs."""
    acc: dict[str, list[tuple[int, float]]] = {s: [] for s in STYLES}
    for p in prefs:
        for key in ("chosen", "rejected"):
            acc[p[f"style_{key}"]].append((len(p[key].split()), p[f"gold_{key}"]))
    return {s: {"count": len(v), "mean_words": round(sum(n for n, _ in v) / len(v), 2),
                "mean_gold": round(sum(g for _, g in v) / len(v), 4)} for s, v in acc.items() if v}


def _counts(rows: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        if key in row:
            out[str(row[key])] = out.get(str(row[key]), 0) + 1
    return dict(sorted(out.items()))


def summarise(world: World, data: dict[str, list[dict]], corpus_docs: list[str],
              corpus_counts: dict[str, int], corpus_bytes: int) -> dict:
    """The world's summary.json (without its `key`): preset, seed, version, rows per data set, corpus size and
    documents per type, entities per split, unsafe topics, categories per data set, the annotator constants and their
    agreement with gold on prefs.jsonl, statistics per response style, and the longest prompt and response in words."""
    agreement = agreement_stats(data["prefs.jsonl"])
    texts = [(row["prompt"], row[k]) for name in ("sft.jsonl", "prefs.jsonl", "prefs_eval.jsonl")
             for row in data[name] for k in ("completion", "chosen", "rejected") if k in row]
    return {
        "preset": world.preset,
        "seed": world.seed,
        "world_version": WORLD_VERSION,
        "files": {name: {"rows": len(rows)} for name, rows in data.items()},
        "corpus_mb": round(corpus_bytes / 1e6, 3),
        "corpus": {"documents": len(corpus_docs), "bytes": corpus_bytes, "by_type": corpus_counts},
        "entities": {table: {part: len(getattr(world, table)[part]) for part in ("train", "heldout")}
                     for table in ("countries", "animals", "events", "arithmetic")},
        "unsafe_topics": {"train": list(world.unsafe_topics["train"]),
                          "eval_only": list(world.unsafe_topics["eval"])},
        "categories": {name: _counts(rows, "category") for name, rows in data.items() if name != "cloze.jsonl"},
        "annotator": {"tau": TAU, "length_coef": LENGTH_COEF, "length_scale": LENGTH_SCALE,
                      "flattery_coef": FLATTERY_COEF},
        "annotator_agreement": agreement["agreement"],
        "label_noise": round(1.0 - agreement["agreement"], 4),
        "agreement_detail": agreement,
        "styles": style_stats(data["prefs.jsonl"]),
        "max_words": {"prompt": max(len(p.split()) for p, _ in texts),
                      "response": max(len(r.split()) for _, r in texts)},
    }


# ----------------------------------------------------------------------------------------------------
# Writing


def source_digest() -> str:
    """sha256 of the world package's source: a code change invalidates built worlds."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def world_key(preset: str, seed: int) -> str:
    """A digest of the preset, the seed, WORLD_VERSION and the world package's source: a built world is reused
    only under the same key."""
    blob = json.dumps({"preset": preset, "seed": seed, "version": WORLD_VERSION, "source": source_digest()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
                   for r in rows).encode("utf-8")


def write_world(world: World, folder: str, key: str) -> dict:
    """Generate everything and write it to `folder`; returns the summary (also in summary.json)."""
    os.makedirs(folder, exist_ok=True)
    summary_path = os.path.join(folder, "summary.json")
    if os.path.exists(summary_path):
        os.remove(summary_path)  # an interrupted rebuild must not look finished
    docs, corpus_counts = make_corpus(world)
    corpus = ("\n" + ENDOFTEXT + "\n").join(docs) + "\n"
    corpus_bytes = corpus.encode("utf-8")
    _write_bytes(os.path.join(folder, "corpus.txt"), corpus_bytes)
    data = make_datasets(world)
    for name in JSONL_FILES:
        _write_bytes(os.path.join(folder, name), _jsonl_bytes(data[name]))
    summary = {"key": key, **summarise(world, data, docs, corpus_counts, len(corpus_bytes))}
    for name in FILES:
        summary["files"].setdefault(name, {})["bytes"] = os.path.getsize(os.path.join(folder, name))
    _write_bytes(summary_path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return summary


def run(cfg) -> dict:
    """Build the world for `cfg` (a WorldConfig) into <out_dir>/<preset>/world/ and return its summary.

    Skips the work when the folder already holds a world built from the same preset, seed and code,
    unless `cfg.force`. The returned dict adds `seconds` (wall time) and `reused`.
    """
    t0 = time.perf_counter()
    try:
        preset_sizes(cfg.preset)
    except ValueError as e:
        raise ValueError(f"WorldConfig.preset: {e}") from None
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ValueError(f"WorldConfig.seed: expected an int, got {cfg.seed!r}")
    folder = os.path.join(cfg.out_dir, cfg.preset, "world")
    key = world_key(cfg.preset, cfg.seed)
    summary_path = os.path.join(folder, "summary.json")
    reused = False
    if not cfg.force and os.path.exists(summary_path) and all(
            os.path.exists(os.path.join(folder, f)) for f in FILES):
        with open(summary_path) as f:
            summary = json.load(f)
        reused = summary.get("key") == key
    if not reused:
        summary = write_world(build_world(cfg.preset, cfg.seed), folder, key)
    seconds = time.perf_counter() - t0
    print(f"[world] {cfg.preset}: {'reused' if reused else 'built'} {folder} in {seconds:.1f} s; corpus "
          f"{summary['corpus_mb']:.2f} MB, {summary['files']['sft.jsonl']['rows']} SFT demos, "
          f"{summary['files']['prefs.jsonl']['rows']} preference pairs, annotator agreement "
          f"{summary['annotator_agreement']:.3f}")
    return {**summary, "seconds": round(seconds, 2), "reused": reused}
