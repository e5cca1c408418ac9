"""The TinyWorld's facts: real-world tables, the per-preset sizes, and the seeded train / held-out split.

What it holds
-------------
* Countries with their capital and continent, animals with four properties (what kind of animal,
  number of legs, food, home), a few famous dates, and small arithmetic (sums, and for the bigger
  presets differences and products). The facts are real and read naturally: "The capital of France is
  Paris", "A spider has eight legs", "The Titanic sank in 1912".
* `PRESET_SIZES`: how much of each table a preset uses, how big the corpus is, and how many
  demonstrations, preference pairs and prompts the builders write. `micro` is for tests, `tiny` is
  learnable by a ~1M-parameter GPT on a CPU in minutes, `small` is richer.
* `build_world(preset, seed)`: the in-memory world. Every table is split into *train* entities and
  *held-out* entities (seeded). The pretraining corpus states the facts of both; SFT, preference and
  RL data only ever mention train entities, so evaluation on held-out entities measures whether
  fine-tuning generalises to facts the model learned only in pretraining.
* `cloze_items(world, split)`: fact cloze prompts ("The capital of France is" -> "Paris") whose exact
  wording the corpus repeats, for probing what the base model learned.

    from minirlhf.world import build_world, cloze_items
    world = build_world("tiny", seed=1337)
    world.countries["train"][:2]          # (Country(name='France', ...), ...)
    cloze_items(world, "train")[:2]       # [('The capital of France is', 'Paris'), ...]

Deliberate simplifications: one continent per country (countries on two continents are left out),
one food and one home per animal (the most typical), and only names that are not substrings of one
another at word boundaries (no Niger / Nigeria), so that a plain word match can tell facts apart.

Known flaw, kept in this world version: arithmetic facts are split one by one, so a held-out sum can
have its commuted twin among the train facts (held-out "1 + 2", train "2 + 1"): 12 of the 16 held-out
arithmetic facts of `tiny` (seed 1337). Held-out arithmetic therefore mostly measures commutation: the
SFT model answers 0.31 of the held-out sums with a twin in training correctly and 0.18 of the others;
GRPO on the gold judge raises the first to 0.53 and leaves the second at 0.15 (8 samples per prompt,
temperature 1). Splitting on the unordered operand pair fixes it but changes every data set of the
world, so it waits for the next world version, with every reported number measured again.

A second flaw waits with it: a held-out animal can still be named in training data as another animal's
food or in a joke, e.g. with tiny seed 7 (rabbit and cow held out) sft.jsonl holds "Eagles eat rabbits."
and the cow joke. It happens for 4 of the seeds 1-39 on tiny and 11 on small; not for the default seed
1337 on tiny, whose held-out animals appear in no SFT, preference or RL data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from minirlhf.world.phrases import article, capitalise

# ----------------------------------------------------------------------------------------------------
# Tables. Order matters: a preset takes the first N rows, so the best-known entities come first.


@dataclass(frozen=True)
class Country:
    """A country with its capital and its continent."""

    name: str  # "France"
    capital: str  # "Paris"
    continent: str  # "Europe"


@dataclass(frozen=True)
class Animal:
    """An animal with the four properties the world states (kind, legs, food, home) and the word forms its sentences
    need."""

    name: str  # "cow"
    plural: str  # "cows"
    kind: str  # "mammal", "bird", "fish", "insect", "reptile", "amphibian", "arachnid", "mollusc"
    legs: int  # 0, 2, 4, 6 or 8
    food: str  # "grass" (a plural or mass noun)
    home: str  # the keyword the judge looks for: "farm"
    lives: str  # "on a farm" (after "A cow lives")
    lives_plural: str  # "on farms" (after "Cows live")


@dataclass(frozen=True)
class Event:
    """A famous date: what happened (`statement`), the question form for asking about it, and the year."""

    statement: str  # "The Titanic sank" (+ " in 1912.")
    question: str  # "did the Titanic sink" (after "When " / "In what year ")
    year: int


@dataclass(frozen=True)
class Arithmetic:
    """One arithmetic fact, `a op b` with op "plus", "minus" or "times"."""

    a: int
    op: str  # "plus", "minus" or "times"
    b: int

    @property
    def answer(self) -> int:
        """The result: a + b, a - b or a * b."""
        return {"plus": self.a + self.b, "minus": self.a - self.b, "times": self.a * self.b}[self.op]

    @property
    def name(self) -> str:
        """The fact in words: "3 plus 4"."""
        return f"{self.a} {self.op} {self.b}"


_COUNTRIES = (
    ("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Egypt", "Cairo", "Africa"),
    ("Brazil", "Brasilia", "South America"), ("Canada", "Ottawa", "North America"),
    ("Australia", "Canberra", "Oceania"), ("Italy", "Rome", "Europe"), ("China", "Beijing", "Asia"),
    ("Germany", "Berlin", "Europe"), ("Spain", "Madrid", "Europe"), ("India", "New Delhi", "Asia"),
    ("Kenya", "Nairobi", "Africa"), ("Peru", "Lima", "South America"),
    ("Argentina", "Buenos Aires", "South America"), ("Greece", "Athens", "Europe"),
    ("Thailand", "Bangkok", "Asia"), ("Norway", "Oslo", "Europe"), ("Morocco", "Rabat", "Africa"),
    ("Cuba", "Havana", "North America"), ("New Zealand", "Wellington", "Oceania"),
    ("Portugal", "Lisbon", "Europe"), ("South Korea", "Seoul", "Asia"), ("Sweden", "Stockholm", "Europe"),
    ("Nigeria", "Abuja", "Africa"), ("Chile", "Santiago", "South America"), ("Ireland", "Dublin", "Europe"),
    ("Vietnam", "Hanoi", "Asia"), ("Ghana", "Accra", "Africa"), ("Colombia", "Bogota", "South America"),
    ("Poland", "Warsaw", "Europe"), ("Nepal", "Kathmandu", "Asia"), ("Ethiopia", "Addis Ababa", "Africa"),
    ("Austria", "Vienna", "Europe"), ("Iran", "Tehran", "Asia"), ("Jamaica", "Kingston", "North America"),
    ("Finland", "Helsinki", "Europe"), ("Senegal", "Dakar", "Africa"),
    ("Venezuela", "Caracas", "South America"), ("Denmark", "Copenhagen", "Europe"),
    ("Pakistan", "Islamabad", "Asia"), ("Hungary", "Budapest", "Europe"), ("Uganda", "Kampala", "Africa"),
    ("Ecuador", "Quito", "South America"), ("Switzerland", "Bern", "Europe"),
    ("Mongolia", "Ulaanbaatar", "Asia"), ("Belgium", "Brussels", "Europe"), ("Zambia", "Lusaka", "Africa"),
    ("Uruguay", "Montevideo", "South America"), ("Iceland", "Reykjavik", "Europe"), ("Fiji", "Suva", "Oceania"),
    # beyond tiny's 50
    ("Romania", "Bucharest", "Europe"), ("Tanzania", "Dodoma", "Africa"), ("Bangladesh", "Dhaka", "Asia"),
    ("Costa Rica", "San Jose", "North America"), ("Bulgaria", "Sofia", "Europe"),
    ("Zimbabwe", "Harare", "Africa"), ("Malaysia", "Kuala Lumpur", "Asia"),
    ("Paraguay", "Asuncion", "South America"), ("Serbia", "Belgrade", "Europe"), ("Rwanda", "Kigali", "Africa"),
    ("Saudi Arabia", "Riyadh", "Asia"), ("Honduras", "Tegucigalpa", "North America"),
    ("Croatia", "Zagreb", "Europe"), ("Angola", "Luanda", "Africa"), ("Lebanon", "Beirut", "Asia"),
    ("Nicaragua", "Managua", "North America"), ("Ukraine", "Kyiv", "Europe"), ("Mali", "Bamako", "Africa"),
    ("Jordan", "Amman", "Asia"), ("Estonia", "Tallinn", "Europe"), ("Sudan", "Khartoum", "Africa"),
    ("Syria", "Damascus", "Asia"), ("Latvia", "Riga", "Europe"), ("Tunisia", "Tunis", "Africa"),
    ("Afghanistan", "Kabul", "Asia"), ("Lithuania", "Vilnius", "Europe"), ("Algeria", "Algiers", "Africa"),
    ("Qatar", "Doha", "Asia"), ("Slovakia", "Bratislava", "Europe"), ("Madagascar", "Antananarivo", "Africa"),
    ("Oman", "Muscat", "Asia"), ("Slovenia", "Ljubljana", "Europe"), ("Iraq", "Baghdad", "Asia"),
)

CONTINENTS = ("Europe", "Asia", "Africa", "North America", "South America", "Oceania")

# name, plural, kind, legs, food, home keyword, "A cow lives ...", "Cows live ..."
_ANIMALS = (
    ("cow", "cows", "mammal", 4, "grass", "farm", "on a farm", "on farms"),
    ("spider", "spiders", "arachnid", 8, "insects", "web", "in a web", "in webs"),
    ("penguin", "penguins", "bird", 2, "fish", "Antarctica", "in Antarctica", "in Antarctica"),
    ("whale", "whales", "mammal", 0, "krill", "ocean", "in the ocean", "in the ocean"),
    ("bee", "bees", "insect", 6, "nectar", "hive", "in a hive", "in hives"),
    ("frog", "frogs", "amphibian", 4, "insects", "pond", "in a pond", "in ponds"),
    ("lion", "lions", "mammal", 4, "meat", "savanna", "on the savanna", "on the savanna"),
    ("panda", "pandas", "mammal", 4, "bamboo", "forest", "in the forest", "in forests"),
    ("chicken", "chickens", "bird", 2, "seeds", "farm", "on a farm", "on farms"),
    ("snake", "snakes", "reptile", 0, "mice", "desert", "in the desert", "in the desert"),
    ("dolphin", "dolphins", "mammal", 0, "fish", "ocean", "in the ocean", "in the ocean"),
    ("eagle", "eagles", "bird", 2, "rabbits", "mountains", "in the mountains", "in the mountains"),
    ("ant", "ants", "insect", 6, "seeds", "anthill", "in an anthill", "in anthills"),
    ("shark", "sharks", "fish", 0, "fish", "ocean", "in the ocean", "in the ocean"),
    ("horse", "horses", "mammal", 4, "hay", "farm", "on a farm", "on farms"),
    ("owl", "owls", "bird", 2, "mice", "forest", "in the forest", "in forests"),
    ("crocodile", "crocodiles", "reptile", 4, "meat", "river", "in rivers", "in rivers"),
    ("camel", "camels", "mammal", 4, "plants", "desert", "in the desert", "in the desert"),
    ("butterfly", "butterflies", "insect", 6, "nectar", "garden", "in gardens", "in gardens"),
    ("rabbit", "rabbits", "mammal", 4, "carrots", "burrow", "in a burrow", "in burrows"),
    ("polar bear", "polar bears", "mammal", 4, "seals", "Arctic", "in the Arctic", "in the Arctic"),
    ("giraffe", "giraffes", "mammal", 4, "leaves", "savanna", "on the savanna", "on the savanna"),
    ("parrot", "parrots", "bird", 2, "fruit", "jungle", "in the jungle", "in the jungle"),
    ("bat", "bats", "mammal", 2, "insects", "cave", "in a cave", "in caves"),
    ("sheep", "sheep", "mammal", 4, "grass", "farm", "on a farm", "on farms"),
    ("turtle", "turtles", "reptile", 4, "plants", "pond", "in a pond", "in ponds"),
    ("tiger", "tigers", "mammal", 4, "meat", "jungle", "in the jungle", "in the jungle"),
    ("squirrel", "squirrels", "mammal", 4, "nuts", "tree", "in a tree", "in trees"),
    ("duck", "ducks", "bird", 2, "plants", "pond", "in a pond", "in ponds"),
    ("salmon", "salmon", "fish", 0, "insects", "river", "in rivers", "in rivers"),
    # beyond tiny's 30
    ("elephant", "elephants", "mammal", 4, "leaves", "savanna", "on the savanna", "on the savanna"),
    ("mouse", "mice", "mammal", 4, "seeds", "field", "in a field", "in fields"),
    ("zebra", "zebras", "mammal", 4, "grass", "savanna", "on the savanna", "on the savanna"),
    ("pig", "pigs", "mammal", 4, "corn", "farm", "on a farm", "on farms"),
    ("goat", "goats", "mammal", 4, "grass", "mountains", "in the mountains", "in the mountains"),
    ("lizard", "lizards", "reptile", 4, "insects", "desert", "in the desert", "in the desert"),
    ("fox", "foxes", "mammal", 4, "mice", "forest", "in the forest", "in forests"),
    ("wolf", "wolves", "mammal", 4, "meat", "forest", "in the forest", "in forests"),
    ("deer", "deer", "mammal", 4, "grass", "forest", "in the forest", "in forests"),
    ("goose", "geese", "bird", 2, "grass", "lake", "on a lake", "on lakes"),
    ("flamingo", "flamingos", "bird", 2, "shrimp", "lake", "on a lake", "on lakes"),
    ("hippo", "hippos", "mammal", 4, "grass", "river", "in rivers", "in rivers"),
    ("ladybug", "ladybugs", "insect", 6, "aphids", "garden", "in gardens", "in gardens"),
    ("grasshopper", "grasshoppers", "insect", 6, "grass", "meadow", "in a meadow", "in meadows"),
    ("pigeon", "pigeons", "bird", 2, "seeds", "city", "in the city", "in cities"),
    ("snail", "snails", "mollusc", 0, "leaves", "garden", "in gardens", "in gardens"),
    ("koala", "koalas", "mammal", 4, "leaves", "tree", "in a tree", "in trees"),
    ("tuna", "tuna", "fish", 0, "fish", "ocean", "in the ocean", "in the ocean"),
    ("mosquito", "mosquitoes", "insect", 6, "blood", "swamp", "in a swamp", "in swamps"),
    ("hedgehog", "hedgehogs", "mammal", 4, "insects", "garden", "in gardens", "in gardens"),
)

KIND_PLURALS = {"mammal": "mammals", "bird": "birds", "fish": "fish", "insect": "insects",
                "reptile": "reptiles", "amphibian": "amphibians", "arachnid": "arachnids",
                "mollusc": "molluscs"}
LEG_WORDS = {0: "no", 2: "two", 4: "four", 6: "six", 8: "eight"}

_EVENTS = (
    ("People first walked on the Moon", "did people first walk on the Moon", 1969),
    ("The Titanic sank", "did the Titanic sink", 1912),
    ("The Berlin Wall fell", "did the Berlin Wall fall", 1989),
    ("The Second World War ended", "did the Second World War end", 1945),
    ("The First World War began", "did the First World War begin", 1914),
    ("The Wright brothers made the first powered flight",
     "did the Wright brothers make the first powered flight", 1903),
    ("Columbus first sailed to the Americas", "did Columbus first sail to the Americas", 1492),
    ("The French Revolution began", "did the French Revolution begin", 1789),
    ("Yuri Gagarin flew into space", "did Yuri Gagarin fly into space", 1961),
    ("The first modern Olympic Games were held", "were the first modern Olympic Games held", 1896),
    # beyond tiny's 10
    ("The Great Fire of London happened", "did the Great Fire of London happen", 1666),
    ("Sputnik was launched", "was Sputnik launched", 1957),
    ("The Declaration of Independence was signed", "was the Declaration of Independence signed", 1776),
    ("The Magna Carta was sealed", "was the Magna Carta sealed", 1215),
    ("The Soviet Union broke apart", "did the Soviet Union break apart", 1991),
    ("William Shakespeare was born", "was William Shakespeare born", 1564),
)

# ----------------------------------------------------------------------------------------------------
# Value vocabularies: the words that name a value of each fact type. The judge looks for them to find
# right and wrong facts; the aliases let "Cows live on farms." count as naming the value "farm".

_FOOD_SINGULARS = {"seeds": ("seed",), "leaves": ("leaf",), "nuts": ("nut",), "carrots": ("carrot",),
                   "plants": ("plant",)}
_HOME_EXTRA = {"ocean": ("sea",), "forest": ("woods",), "city": ("cities",), "savanna": ("savannah",),
               "mountains": ("mountain",)}


def value_aliases(vtype: str, value: str) -> tuple[str, ...]:
    """Words that name `value` of fact type `vtype` ("capital", "continent", "kind", "legs", "food", "home")."""
    if vtype == "capital":
        return (value, "Delhi") if value == "New Delhi" else (value,)
    if vtype == "continent":
        return (value,)
    if vtype == "kind":
        return tuple(dict.fromkeys((value, KIND_PLURALS[value])))
    if vtype == "legs":
        n = int(value)
        return ("no legs", "none", "zero legs", "0 legs") if n == 0 else (LEG_WORDS[n], str(n))
    if vtype == "food":
        return (value,) + _FOOD_SINGULARS.get(value, ())
    if vtype == "home":
        plural = () if value.endswith("s") or value[0].isupper() or value == "city" else (value + "s",)
        return (value,) + plural + _HOME_EXTRA.get(value, ())
    raise ValueError(f"unknown value type {vtype!r}")


def value_vocabulary() -> dict[str, tuple[str, ...]]:
    """Every canonical value of each fact type across the full tables (every preset shares them)."""
    animals = all_animals()
    return {
        "capital": tuple(c.capital for c in all_countries()),
        "continent": CONTINENTS,
        "kind": tuple(KIND_PLURALS),
        "legs": tuple(str(n) for n in LEG_WORDS),
        "food": tuple(dict.fromkeys(a.food for a in animals)),
        "home": tuple(dict.fromkeys(a.home for a in animals)),
    }


# The judge knows arithmetic on these operands for every op, whatever the preset builds.
MAX_JUDGED_OPERAND = 20
ARITHMETIC_OPS = ("plus", "minus", "times")


def all_countries() -> tuple[Country, ...]:
    """Every row of the country table, in table order (a preset takes the first N)."""
    return tuple(Country(*row) for row in _COUNTRIES)


def all_animals() -> tuple[Animal, ...]:
    """Every row of the animal table, in table order (a preset takes the first N)."""
    return tuple(Animal(*row) for row in _ANIMALS)


def all_events() -> tuple[Event, ...]:
    """Every row of the event table, in table order (a preset takes the first N)."""
    return tuple(Event(*row) for row in _EVENTS)


def arithmetic_facts(max_operand: int, ops: tuple[str, ...], min_operand: int = 1) -> tuple[Arithmetic, ...]:
    """Every `a op b` with operands in [min_operand, max_operand]; differences stay non-negative."""
    out = []
    for op in ops:
        for a in range(min_operand, max_operand + 1):
            for b in range(min_operand, max_operand + 1):
                if op == "minus" and b > a:
                    continue
                out.append(Arithmetic(a, op, b))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------
# Presets. `prose_share` is the share of the corpus given to fact-free everyday stories (prose.py: a
# richer vocabulary for the bigger BPE vocabularies); `max_words` caps a templated response;
# `max_chars` caps prompt + response in characters so that a rendered conversation fits the preset's
# context (about 2.2 characters per token with micro's 512-token vocabulary, 3.4 with tiny's 2048;
# measured on the world's own corpus).

PRESET_SIZES: dict[str, dict] = {
    # tests only: a handful of entities, a ~100 KB corpus, built in well under a second
    "micro": dict(countries=8, animals=6, events=4, max_operand=4, ops=("plus",),
                  unsafe_train=2, unsafe_eval=1, harmless=5, chitchat=5, heldout_fraction=0.25,
                  corpus_bytes=100_000, prose_share=0.0, max_words=20, max_chars=95,
                  n_sft=120, n_sft_eval=40, n_prefs=300, n_prefs_eval=80, n_rl=100, n_eval_prompts=80,
                  n_forum_eval=60),
    # CPU: a 1M-parameter GPT learns these facts in a few minutes of pretraining
    "tiny": dict(countries=50, animals=30, events=10, max_operand=9, ops=("plus",),
                 unsafe_train=4, unsafe_eval=2, harmless=12, chitchat=12, heldout_fraction=0.2,
                 corpus_bytes=2_000_000, prose_share=0.0, max_words=60, max_chars=330,
                 n_sft=1500, n_sft_eval=300, n_prefs=4000, n_prefs_eval=500, n_rl=1000, n_eval_prompts=400,
                 n_forum_eval=300),
    # laptop GPU: every table, three operations
    "small": dict(countries=len(_COUNTRIES), animals=len(_ANIMALS), events=len(_EVENTS), max_operand=12,
                  ops=("plus", "minus", "times"), unsafe_train=6, unsafe_eval=2, harmless=14, chitchat=13,
                  heldout_fraction=0.2, corpus_bytes=6_000_000, prose_share=0.15, max_words=120,
                  max_chars=800,
                  n_sft=6000, n_sft_eval=600, n_prefs=15000, n_prefs_eval=1000, n_rl=4000,
                  n_eval_prompts=600, n_forum_eval=400),
}
# The GPT-2 shape trains on the small world with a bigger corpus.
PRESET_SIZES["gpt2"] = dict(PRESET_SIZES["small"], corpus_bytes=12_000_000)


def preset_sizes(preset: str) -> dict:
    """PRESET_SIZES[preset] (the dict itself, not a copy); a ValueError listing the valid presets for any other name."""
    if preset not in PRESET_SIZES:
        raise ValueError(f"unknown world preset {preset!r}; valid presets: {', '.join(PRESET_SIZES)}")
    return PRESET_SIZES[preset]


# ----------------------------------------------------------------------------------------------------
# The world: the preset's slice of every table, split into train and held-out


@dataclass
class World:
    """One preset's facts and topics, each split into "train" and "heldout" (tasks use "train"/"eval")."""

    preset: str
    seed: int
    sizes: dict
    countries: dict[str, tuple[Country, ...]]  # {"train": ..., "heldout": ...}
    animals: dict[str, tuple[Animal, ...]]
    events: dict[str, tuple[Event, ...]]
    arithmetic: dict[str, tuple[Arithmetic, ...]]
    unsafe_topics: dict[str, tuple[str, ...]]  # {"train": topics seen in SFT, "eval": eval-only topics}
    unsafe_heldout_prompts: frozenset[str]  # phrasings of train topics kept for eval
    harmless_topics: dict[str, tuple[str, ...]]  # {"train": ..., "heldout": ...}
    chitchat_topics: dict[str, tuple[str, ...]]
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # tasks, memoised by tasks.py

    def all(self, table: str) -> tuple:
        """Train then held-out rows of one table ("countries", "animals", "events", "arithmetic")."""
        d = getattr(self, table)
        return d["train"] + d["heldout"]


def _split(rows: tuple, fraction: float, rng: random.Random) -> dict[str, tuple]:
    """Seeded train / held-out split that keeps the table order inside each part (at least one held out)."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_held = max(1, round(fraction * len(rows))) if len(rows) > 1 else 0
    held = set(order[:n_held])
    return {"train": tuple(r for i, r in enumerate(rows) if i not in held),
            "heldout": tuple(r for i, r in enumerate(rows) if i in held)}


def build_world(preset: str = "tiny", seed: int = 1337) -> World:
    """The preset's world for this seed: tables sliced to size and split into train / held-out.

    Cheap (no text is generated here); the corpus and the data sets come from `corpus.py`,
    `tasks.py` and `build.py`.
    """
    from minirlhf.world.tasks import CHITCHAT, HARMLESS, UNSAFE  # topic tables live with the prompts

    sizes = preset_sizes(preset)
    frac = sizes["heldout_fraction"]

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}:split:{name}")

    unsafe_names = tuple(t.topic for t in UNSAFE if not t.eval_only)[: sizes["unsafe_train"]]
    unsafe_eval = tuple(t.topic for t in UNSAFE if t.eval_only)[: sizes["unsafe_eval"]]
    held_prompts = []
    r = rng("unsafe-phrasings")
    for t in UNSAFE:
        if t.topic in unsafe_names:  # one phrasing of every train topic is kept for eval
            held_prompts.append(t.prompts[r.randrange(len(t.prompts))])
    harmless = _split(tuple(t.topic for t in HARMLESS[: sizes["harmless"]]), frac, rng("harmless"))
    chitchat = _split(tuple(t.topic for t in CHITCHAT[: sizes["chitchat"]]), frac, rng("chitchat"))
    return World(
        preset=preset,
        seed=seed,
        sizes=sizes,
        countries=_split(all_countries()[: sizes["countries"]], frac, rng("countries")),
        animals=_split(all_animals()[: sizes["animals"]], frac, rng("animals")),
        events=_split(all_events()[: sizes["events"]], frac, rng("events")),
        arithmetic=_split(arithmetic_facts(sizes["max_operand"], sizes["ops"]), frac, rng("arithmetic")),
        unsafe_topics={"train": unsafe_names, "eval": unsafe_eval},
        unsafe_heldout_prompts=frozenset(held_prompts),
        harmless_topics=harmless,
        chitchat_topics=chitchat,
    )


# ----------------------------------------------------------------------------------------------------
# Fact sentences. The first form of each is the *cloze form*: the corpus states every fact in that
# exact wording many times, and `cloze_items` cuts it before the answer.


def country_sentences(c: Country) -> dict[str, tuple[str, ...]]:
    """The wordings of a country's facts: {"capital": 5 sentences, "continent": 4}, the cloze form first in each."""
    return {
        "capital": (f"The capital of {c.name} is {c.capital}.", f"{c.capital} is the capital of {c.name}.",
                    f"{c.capital} is the capital city of {c.name}.", f"The capital city of {c.name} is {c.capital}.",
                    f"{c.name} has its capital in {c.capital}."),
        "continent": (f"{c.name} is a country in {c.continent}.", f"{c.name} lies in {c.continent}.",
                      f"You can find {c.name} in {c.continent}.",
                      f"{c.name} is one of the countries of {c.continent}."),
    }


def animal_sentences(a: Animal) -> dict[str, tuple[str, ...]]:
    """The wordings of an animal's facts: {"kind", "legs", "food", "home"} -> 3 sentences each, the cloze form first."""
    A = capitalise(article(a.name))
    P = capitalise(a.plural)
    kind_art = article(a.kind)
    return {
        "kind": (f"{A} {a.name} is {kind_art} {a.kind}.", f"{P} are {KIND_PLURALS[a.kind]}.",
                 f"The {a.name} is {kind_art} {a.kind}."),
        "legs": (f"{A} {a.name} has {LEG_WORDS[a.legs]} legs.", f"{P} have {LEG_WORDS[a.legs]} legs.",
                 f"Every {a.name} has {LEG_WORDS[a.legs]} legs."),
        "food": (f"{A} {a.name} eats {a.food}.", f"{P} eat {a.food}.",
                 f"The favourite food of {article(a.name)} {a.name} is {a.food}."),
        "home": (f"{A} {a.name} lives {a.lives}.", f"{P} live {a.lives_plural}.",
                 f"You can find {a.plural} {a.lives_plural}."),
    }


def mid_sentence(statement: str) -> str:
    """'The Titanic sank' -> 'the Titanic sank' for use inside a sentence (names keep their capital)."""
    first, _, rest = statement.partition(" ")
    return (first.lower() if first in ("The", "People") else first) + " " + rest


def event_sentences(e: Event) -> tuple[str, ...]:
    """Three wordings of an event's year, the cloze form ("The Titanic sank in 1912.") first."""
    return (f"{e.statement} in {e.year}.", f"In {e.year}, {mid_sentence(e.statement)}.",
            f"The year {e.year} is when {mid_sentence(e.statement)}.")


def arithmetic_sentences(x: Arithmetic) -> tuple[str, ...]:
    """Three wordings of an arithmetic fact, the cloze form ("3 plus 4 is 7.") first, then "3 + 4 = 7." and an
    "If you take ..." sentence."""
    sym = {"plus": "+", "minus": "-", "times": "x"}[x.op]
    return (f"{x.a} {x.op} {x.b} is {x.answer}.", f"{x.a} {sym} {x.b} = {x.answer}.",
            f"If you take {x.a} {x.op} {x.b}, you get {x.answer}.")


def cloze_rows(world: World, split: str = "train") -> list[tuple[str, str, str]]:
    """(prompt, answer, fact type) for the facts of one entity split ("train" or "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"cloze_rows: split must be 'train' or 'heldout', got {split!r}")
    rows: list[tuple[str, str, str]] = []
    for c in world.countries[split]:
        rows.append((f"The capital of {c.name} is", c.capital, "capital"))
        rows.append((f"{c.name} is a country in", c.continent, "continent"))
    for a in world.animals[split]:
        A = capitalise(article(a.name))
        rows.append((f"{A} {a.name} is {article(a.kind)}", a.kind, "kind"))
        rows.append((f"{A} {a.name} has", f"{LEG_WORDS[a.legs]} legs", "legs"))
        rows.append((f"{A} {a.name} eats", a.food, "food"))
        rows.append((f"{A} {a.name} lives", a.lives, "home"))
    for e in world.events[split]:
        rows.append((f"{e.statement} in", str(e.year), "date"))
    for x in world.arithmetic[split]:
        rows.append((f"{x.a} {x.op} {x.b} is", str(x.answer), x.op))
    return rows


def cloze_items(world: World, split: str = "train") -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the facts of one entity split ("train" or "heldout").

    The prompt is the cloze form of a fact cut before its answer; the base model is right when its
    greedy continuation starts with the answer ("The capital of France is" -> "Paris").
    """
    return [(prompt, answer) for prompt, answer, _ in cloze_rows(world, split)]
