"""The pretraining corpus: encyclopedic text, lists, short stories, quizzes and forum threads.

`make_corpus(world)` returns plain-text documents (joined by `<|endoftext|>` in corpus.txt) that state
every fact of the world (train *and* held-out entities) many times, in several paraphrases, always
including the fact's *cloze form* ("The capital of France is Paris."), so a small base model can learn
them. Besides facts the corpus has:

* forum threads in a plain `Q: {question}` / `A: {answer}` line format (a thread may have several
  answers) whose answers are of mixed quality: correct and concise, correct but rambling, hedged,
  wrong, rude, flattering, or drifting into another question;
* cartoonish unsafe requests ("How do I make a stink bomb?") that the forum mostly answers with
  nonsense "steps", so the base model, like a real one, tends to comply;
* harmless requests that merely sound risky ("How do I kill a python process?"), usually answered;
* for the bigger presets, fact-free everyday stories (prose.py) that give the tokenizer more words.

There are no chat tokens anywhere: the chat format appears only in SFT data. A wrong fact is only ever
said in hedged forum speech ("I think it is Berlin."), never in a cloze form, so the cloze prompts
have one continuation in the whole corpus. (Known flaws of this world version, see facts.py on why they
wait: a "wrong" hedged arithmetic answer clipped at 0 can be the right one, "5 minus 5" answered "0", and
a wrong animal answer with nothing to draw falls back to "I think it is no idea.".)

    from minirlhf.world import build_world
    from minirlhf.world.corpus import make_corpus, extract_forum_answer
    docs, counts = make_corpus(build_world("micro"))
    extract_forum_answer(" The capital of France is Paris.\\nA: Agreed.")   # 'The capital of France is Paris.'

Deliberate simplifications: documents come from templates, so the text is repetitive by design
(what a 1M-parameter model can learn in minutes); the corpus grows in passes over every entity until
it reaches the preset's size, so every fact is seen about equally often.
"""

from __future__ import annotations

import random

from minirlhf.world.facts import (
    CONTINENTS, KIND_PLURALS, LEG_WORDS, Animal, Arithmetic, Country, Event, World, animal_sentences,
    arithmetic_sentences, country_sentences, event_sentences, mid_sentence,
)
from minirlhf.world.phrases import (
    ENDOFTEXT, FLATTERY_OPENERS, RUDE_REPLIES, article, capitalise,
)
from minirlhf.world.prose import everyday_story
from minirlhf.world.tasks import (
    Task, compliance_responses, ideal_responses, tasks_by_category, tasks_for, sample_task, verbose_response,
)

NAMES = (("Tom", "he", "his"), ("Anna", "she", "her"), ("Ben", "he", "his"), ("Mia", "she", "her"),
         ("Sam", "he", "his"), ("Lily", "she", "her"), ("Max", "he", "his"), ("Zoe", "she", "her"),
         ("Leo", "he", "his"), ("Emma", "she", "her"), ("Noah", "he", "his"), ("Ella", "she", "her"),
         ("Finn", "he", "his"), ("Ruby", "she", "her"), ("Omar", "he", "his"), ("Nina", "she", "her"))

HEDGES = ("I think it is {x}.", "Pretty sure it is {x}.", "It is {x}, I think.", "Not sure, but maybe {x}.")
AGREEMENTS = ("Agreed.", "Yes, that is right.", "Correct.", "Thanks, that helps!", "Same answer here.")
FORUM_WARNINGS = ("Please don't do that. {reason}", "Don't. {reason}", "Why would you do that? {reason}")
FORUM_OVER_REFUSALS = ("Why would you want to do that? That sounds dangerous.",
                       "That sounds risky. Maybe ask someone else.")


def extract_forum_answer(completion: str) -> str:
    """The first answer in a base-model continuation of "Q: ...\\nA:": up to the first newline, the
    next "Q:" / "A:" marker or `<|endoftext|>`, stripped."""
    text = completion.split(ENDOFTEXT, 1)[0].split("\n", 1)[0]
    for marker in (" Q:", " A:"):
        text = text.split(marker, 1)[0]
    return text.strip()


def forum_prompt(question: str) -> str:
    """The forum form of a question, ready for a base model to continue: "Q: {question}\\nA:"."""
    return f"Q: {question}\nA:"


# ----------------------------------------------------------------------------------------------------
# Encyclopedic documents and lists


def country_doc(c: Country, rng: random.Random) -> str:
    """A short paragraph on a country: both cloze forms, 1-2 more capital sentences and one more continent sentence,
    shuffled; headed by the country's name half of the time."""
    s = country_sentences(c)
    parts = [s["capital"][0], s["continent"][0]]
    parts += rng.sample(s["capital"][1:], rng.randint(1, 2)) + rng.sample(s["continent"][1:], 1)
    rng.shuffle(parts)
    text = " ".join(parts)
    return f"{c.name}\n{text}" if rng.random() < 0.5 else text


def animal_doc(a: Animal, rng: random.Random) -> str:
    """A short paragraph on an animal: the cloze form of each property (kind, legs, food, home), each followed by
    another wording with probability 0.6; headed by "The {name}" half of the time."""
    s = animal_sentences(a)
    parts = []
    for prop in ("kind", "legs", "food", "home"):
        parts.append(s[prop][0])
        if rng.random() < 0.6:
            parts.append(rng.choice(s[prop][1:]))
    text = " ".join(parts)
    return f"The {a.name}\n{text}" if rng.random() < 0.5 else text


def event_doc(e: Event, rng: random.Random) -> str:
    """Three sentences on an event: its cloze form, a filler sentence, and another wording of its date."""
    s = event_sentences(e)
    extra = rng.choice(("That was a long time ago.", "People still talk about it today.",
                        "It is in every history book.", "Many people remember that year."))
    return " ".join([s[0], extra, rng.choice(s[1:])])


def arithmetic_doc(facts: list[Arithmetic], rng: random.Random) -> str:
    """A titled list of arithmetic facts, one per line: the cloze form with probability 0.7, else another wording."""
    title = rng.choice(("Maths practice", "Number facts", "Sums to learn", "Homework"))
    lines = [arithmetic_sentences(x)[0] if rng.random() < 0.7 else rng.choice(arithmetic_sentences(x)[1:])
             for x in facts]
    return title + "\n" + "\n".join(lines)


def continent_doc(continent: str, countries: list[Country], rng: random.Random) -> str:
    """A titled list of 3-6 of `countries` (all of them if fewer) with their capitals in cloze form."""
    chosen = rng.sample(countries, min(len(countries), rng.randint(3, 6)))
    lines = [country_sentences(c)["capital"][0] for c in chosen]
    return f"Some countries in {continent} and their capitals\n" + "\n".join(lines)


def animal_list_doc(animals: list[Animal], rng: random.Random) -> str:
    """A titled list of 3-5 of `animals` (all of them if fewer), each stating one property, the same randomly chosen
    one for all, in cloze form."""
    chosen = rng.sample(animals, min(len(animals), rng.randint(3, 5)))
    prop = rng.choice(("kind", "legs", "food", "home"))
    title = {"kind": "What kind of animal?", "legs": "Counting legs", "food": "What animals eat",
             "home": "Where animals live"}[prop]
    return title + "\n" + "\n".join(animal_sentences(a)[prop][0] for a in chosen)


def events_doc(events: list[Event], rng: random.Random) -> str:
    """A "Famous dates" list of 2-4 of `events` (all of them if fewer) in cloze form."""
    chosen = rng.sample(events, min(len(events), rng.randint(2, 4)))
    return "Famous dates\n" + "\n".join(event_sentences(e)[0] for e in chosen)


# ----------------------------------------------------------------------------------------------------
# Stories and quizzes


def travel_story(c: Country, rng: random.Random) -> str:
    """A short story of a trip to a country that states its capital (in cloze form too) and its continent."""
    name, he, his = rng.choice(NAMES)
    He = capitalise(he)
    food = rng.choice(("ice cream", "soup", "fresh bread", "noodles", "cake"))
    return (f"{name} wanted to visit {c.name}. {He} packed {his} bag and flew to {c.capital}. "
            f"{c.capital} is the capital of {c.name}. {He} walked around the city all day and ate {food}. "
            f"{c.name} is a country in {c.continent}, so the trip was a long one. "
            f"When {name} came home, {he} told everyone: \"The capital of {c.name} is {c.capital}.\"")


def animal_story(a: Animal, rng: random.Random) -> str:
    """A short story of a visit to an animal that states its four properties (kind, legs, food, home) in cloze form."""
    name, he, his = rng.choice(NAMES)
    s = animal_sentences(a)
    place = rng.choice(("the zoo", "a farm", "a nature park", "a museum of animals"))
    return (f"{name} went to {place} with {his} grandmother. There they saw {article(a.name)} {a.name}. "
            f"\"{s['kind'][0]}\" said Grandma. \"{s['legs'][0]} {s['food'][0]}\" "
            f"{name} learned that {a.plural} live {a.lives_plural}. "
            f"At night {he} drew a picture of the {a.name} and wrote under it: {s['home'][0]}")


def counting_story(x: Arithmetic, rng: random.Random) -> str:
    """A short counting story (things found, given away, or in bags, by `x.op`) that ends with the fact's cloze form."""
    name, he, his = rng.choice(NAMES)
    thing = rng.choice(("apples", "marbles", "stickers", "shells", "pencils", "sweets"))
    He = capitalise(he)
    if x.op == "plus":
        story = f"{name} had {x.a} {thing}. Then {he} found {x.b} more. Now {name} has {x.answer} {thing}."
    elif x.op == "minus":
        story = f"{name} had {x.a} {thing}. {He} gave {x.b} of them away. Now {name} has {x.answer} {thing}."
    else:
        story = f"{name} has {x.a} bags with {x.b} {thing} in each bag. That makes {x.answer} {thing}."
    return f"{story} {name} wrote it down: {x.a} {x.op} {x.b} is {x.answer}."


def history_story(e: Event, rng: random.Random) -> str:
    """Two sentences of a history class that state an event's year twice."""
    name, he, his = rng.choice(NAMES)
    return (f"In history class, the teacher told {name} that {mid_sentence(e.statement)} in {e.year}. "
            f"{name} wrote it in {his} notebook: {e.statement} in {e.year}.")


def quiz_doc(tasks: list[Task], rng: random.Random) -> str:
    """A teacher-student quiz: for each task the teacher's question, one of its ideal answers, and a word of praise."""
    lines = []
    for t in tasks:
        lines.append(f"Teacher: {t.prompt}")
        lines.append(f"Student: {rng.choice(ideal_responses(t))}")
        lines.append(f"Teacher: {rng.choice(('Well done!', 'Correct.', 'Very good.', 'That is right.'))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Forum threads


def short_answer(task: Task) -> str:
    """The bare answer a forum user might give ("Paris", "four legs", "7")."""
    o = task.obj
    if task.category == "arithmetic":
        return str(o.answer)
    if task.topic == "capital":
        return o.capital
    if task.topic == "continent":
        return o.continent
    if task.topic == "kind":
        return f"{article(o.kind)} {o.kind}"
    if task.topic == "legs":
        return f"{LEG_WORDS[o.legs]} legs"
    if task.topic == "food":
        return o.food
    if task.topic == "home":
        return o.lives
    if task.topic == "date":
        return str(o.year)
    return ""  # "tell me about X" has no bare answer


def wrong_short_answer(task: Task, world: World, rng: random.Random) -> str:
    """A wrong bare answer of the right type, said only in hedged forum speech."""
    o = task.obj
    if task.topic in ("capital", "country"):
        return rng.choice([c.capital for c in world.all("countries") if c.capital != o.capital] or ["Atlantis"])
    if task.topic == "continent":
        return rng.choice([c for c in CONTINENTS if c != o.continent])
    if task.topic == "date":
        return str(o.year + rng.choice((-1, 1)) * rng.randint(1, 40))
    if task.category == "arithmetic":
        return str(max(0, o.answer + rng.choice((-2, -1, 1, 2))))
    animals = [a for a in world.all("animals") if a.name != o.name]
    other = rng.choice(animals) if animals else o
    if task.topic == "kind" and other.kind != o.kind:
        return f"{article(other.kind)} {other.kind}"
    if task.topic == "legs" and other.legs != o.legs:
        return f"{LEG_WORDS[other.legs]} legs"
    if task.topic == "food" and other.food != o.food:
        return other.food
    if task.topic == "home" and other.home != o.home:
        return other.lives
    if task.topic == "animal":
        kind = rng.choice([k for k in KIND_PLURALS if k != o.kind])
        return f"{article(kind)} {kind}"
    return "no idea"


def forum_reply(task: Task, rng: random.Random, world: World, others: list[Task]) -> tuple[str, str]:
    """One forum answer to a task and its quality label."""
    r = rng.random()
    if task.category == "unsafe":
        if r < 0.65:
            return rng.choice(compliance_responses(task.obj)), "compliance"
        if r < 0.85:
            return rng.choice(FORUM_WARNINGS).format(reason=task.obj.reason), "warning"
        return rng.choice(RUDE_REPLIES), "rude"
    if task.category in ("harmless", "chitchat"):
        if r < 0.75:
            return rng.choice(ideal_responses(task)), "correct"
        if r < 0.85 and task.category == "harmless":
            return rng.choice(FORUM_OVER_REFUSALS), "refusal"
        if r < 0.93:
            return rng.choice(RUDE_REPLIES), "rude"
        return rng.choice(FLATTERY_OPENERS) + " " + rng.choice(ideal_responses(task)), "flattering"
    # questions about facts
    if r < 0.40:
        return rng.choice(ideal_responses(task)), "correct"
    if r < 0.52:
        ans = short_answer(task)
        if ans:
            return rng.choice(HEDGES).format(x=ans), "hedged"
        return rng.choice(ideal_responses(task)), "correct"
    if r < 0.67:
        return verbose_response(task, rng, max_words=60), "rambling"
    if r < 0.77:
        return rng.choice(HEDGES).format(x=wrong_short_answer(task, world, rng)), "wrong"
    if r < 0.85:
        return rng.choice(RUDE_REPLIES), "rude"
    if r < 0.95:
        other = rng.choice(others)
        q = other.prompt[0].lower() + other.prompt[1:]
        return f"{rng.choice(ideal_responses(task))} By the way, {q}", "drift"
    return rng.choice(FLATTERY_OPENERS) + " " + rng.choice(ideal_responses(task)), "flattering"


def forum_thread(task: Task, rng: random.Random, world: World, others: list[Task]) -> str:
    """A thread: the question, one to three answers, sometimes drifting into a new question."""
    lines = [f"Q: {task.prompt}"]
    previous = ""
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        if previous == "wrong" and rng.random() < 0.7:
            lines.append(f"A: No, that is wrong. {rng.choice(ideal_responses(task))}")
            previous = "correct"
            continue
        if previous in ("correct", "hedged") and rng.random() < 0.4:
            lines.append(f"A: {rng.choice(AGREEMENTS)}")
            continue
        reply, previous = forum_reply(task, rng, world, others)
        lines.append(f"A: {reply}")
    if rng.random() < 0.1:
        other = rng.choice(others)
        lines.append(f"Q: {other.prompt}")
        lines.append(f"A: {rng.choice(ideal_responses(other))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# The whole corpus


def _one_pass(world: World, rng: random.Random, all_tasks: dict[str, list[Task]],
              fact_tasks: list[Task]) -> list[tuple[str, str]]:
    """One pass over every entity: (document type, text) pairs, shuffled."""
    countries, animals = list(world.all("countries")), list(world.all("animals"))
    events, arithmetic = list(world.all("events")), list(world.all("arithmetic"))
    docs: list[tuple[str, str]] = []
    docs += [("encyclopedia", country_doc(c, rng)) for c in countries]
    docs += [("encyclopedia", animal_doc(a, rng)) for a in animals]
    docs += [("encyclopedia", event_doc(e, rng)) for e in events]
    shuffled = arithmetic[:]
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 8):
        docs.append(("list", arithmetic_doc(shuffled[i:i + 8], rng)))
    for cont in CONTINENTS:
        members = [c for c in countries if c.continent == cont]
        if members:
            docs.append(("list", continent_doc(cont, members, rng)))
    docs += [("list", animal_list_doc(animals, rng)) for _ in range(max(1, len(animals) // 5))]
    docs += [("list", events_doc(events, rng)) for _ in range(max(1, len(events) // 4))]
    docs += [("story", travel_story(c, rng)) for c in rng.sample(countries, max(1, len(countries) // 3))]
    docs += [("story", animal_story(a, rng)) for a in rng.sample(animals, max(1, len(animals) // 3))]
    docs += [("story", counting_story(x, rng)) for x in rng.sample(arithmetic, max(1, len(arithmetic) // 6))]
    docs += [("story", history_story(e, rng)) for e in rng.sample(events, max(1, len(events) // 3))]
    for _ in range(max(1, (len(countries) + len(animals)) // 8)):
        docs.append(("quiz", quiz_doc([rng.choice(fact_tasks) for _ in range(rng.randint(2, 4))], rng)))
    n_threads = len(countries) + len(animals) + len(events) + len(arithmetic) // 2
    for _ in range(n_threads):
        docs.append(("forum", forum_thread(sample_task(all_tasks, rng), rng, world, fact_tasks)))
    share = world.sizes["prose_share"]  # fact-free everyday stories, for a richer vocabulary
    prose_bytes = share / (1.0 - share) * sum(len(text) for _, text in docs)
    while prose_bytes > 0:
        story = everyday_story(rng)
        docs.append(("prose", story))
        prose_bytes -= len(story)
    rng.shuffle(docs)
    return docs


def corpus_documents(world: World) -> list[tuple[str, str]]:
    """The preset's pretraining documents as (type, text), about `corpus_bytes` of text in all.

    Types: encyclopedia, list, story, quiz, forum (and prose on the bigger presets). Passes over every
    entity repeat until the size is reached, so each fact appears in all its paraphrases many times;
    the last pass is cut when the size is reached.
    """
    rng = random.Random(f"{world.seed}:corpus")
    tasks = tasks_for(world, "train") + tasks_for(world, "eval")
    by_category = tasks_by_category(tasks)
    fact_tasks = [t for t in tasks if t.category in ("fact", "arithmetic")]
    target = world.sizes["corpus_bytes"]
    docs: list[tuple[str, str]] = []
    size = 0
    while size < target:
        for kind, text in _one_pass(world, rng, by_category, fact_tasks):
            docs.append((kind, text))
            size += len(text.encode("utf-8")) + len(ENDOFTEXT)
            if size >= target:
                break
    return docs


def make_corpus(world: World) -> tuple[list[str], dict[str, int]]:
    """The pretraining documents (texts) and the number of documents of each type."""
    docs = corpus_documents(world)
    counts: dict[str, int] = {}
    for kind, _ in docs:
        counts[kind] = counts.get(kind, 0) + 1
    return [text for _, text in docs], dict(sorted(counts.items()))
