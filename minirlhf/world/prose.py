"""Everyday prose: short fact-free stories over a few hundred common English words.

The fact documents of the world use a small vocabulary (a few thousand distinct words at most), which
is all a `tiny` model needs. Bigger presets train bigger BPE vocabularies (4096 tokens for `small`), and
byte-level BPE can only learn as many merges as the text has distinct character sequences, so the
`small` corpus mixes in these stories to give the tokenizer (and the model) more English to learn.

    import random
    from minirlhf.world.prose import everyday_story
    everyday_story(random.Random(0))   # 'Loudly, Edith swept the puzzle and put it above the stadium. ...'

Deliberate simplifications: sentences are drawn from a handful of templates over word lists, so they
are grammatical but often whimsical ("Mia painted the quiet lantern beside the harbour."). They never
state a fact of the world, so they cannot disturb what the fact documents teach.
"""

from __future__ import annotations

import random

from minirlhf.world.phrases import article, capitalise

PEOPLE = tuple("""
Hugo Clara Felix Maya Oscar Iris Jasper Alice Rosa Theo Layla Arthur Elsie Victor Hazel Samuel Nora Rufus
Greta Milo Ada Bruno Cora Dexter Edith Gideon Harriet Isaac Juno Kasper Lena Marcus Olive Pablo Quinn
Rosalind Silas Tessa Ulric Vera Walter Xena Yusuf Zara Basil Daphne Emil Flora Gus Hattie Ivan Josie
""".split())

NOUNS = tuple("""
apple basket blanket bottle bucket button candle carpet chair clock coat compass cookie cup curtain
cushion desk diary dictionary door drawer drum envelope fence flag flashlight flower fork fountain gate
glove hammer handle hat helmet jacket jar kettle key kite ladder lamp lantern letter map marble mirror
mitten mug necklace needle newspaper notebook oven paddle paintbrush pan parcel pebble pencil piano
pillow plate pocket postcard pot puzzle quilt radio ribbon ring rope ruler sandwich saucer scarf shelf
shovel skateboard sled sofa spoon staircase stamp statue stone stool suitcase sweater table teapot
telescope tent ticket torch towel toy tray trumpet tunnel umbrella vase violin wagon wallet whistle
wheel boat bicycle train bus tractor rocket castle bridge tower lighthouse windmill cottage palace
bakery museum station theatre cinema stadium factory laboratory workshop kitchen bedroom attic cellar
balcony hallway porch roof adventure answer birthday breakfast dinner lunch picnic holiday journey
lesson message mystery party plan promise riddle secret song story surprise idea dream race festival
concert bread butter jam lemon melon noodle orange pancake pear pepper pie pizza potato pumpkin salad
soup strawberry tomato waffle biscuit muffin cupcake omelette porridge chocolate sandwich cabbage onion
garlic cucumber blueberry cherry coconut peach plum raisin walnut almond carpenter baker painter sailor
farmer teacher doctor pilot gardener musician librarian engineer astronaut inventor detective poet
""".split())

PLACES = tuple("""
park beach village town market harbour library playground valley island square countryside seaside
riverbank hilltop orchard greenhouse courtyard station bakery museum bridge castle cottage lighthouse
workshop kitchen attic cellar balcony hallway porch stadium theatre laboratory factory palace windmill
""".split())

ADJECTIVES = tuple("""
ancient bright brave busy calm careful cheerful cold colourful cosy curious dark delicious dusty early
empty enormous famous fancy fresh friendly funny gentle giant golden grumpy happy heavy hidden hollow
huge hungry icy jolly large little lonely loud lucky magnificent messy mighty modern muddy mysterious
narrow neat nervous noisy odd old patient peaceful pink plain polite precious proud purple quick quiet
rainy rare rusty sandy scary shiny short silent silly silver simple sleepy slow smooth soft sparkling
spicy splendid steady sticky strange strong sunny sweet tall tidy tiny tired tricky warm wet wide wild
windy wise wooden yellow young crooked fluffy gigantic glittering humble marvellous ordinary rosy
shabby spotless stripy velvet wobbly
""".split())

VERBS = tuple("""
admired baked borrowed built buried carried carved chased cleaned climbed collected cooked copied
counted covered decorated delivered discovered drew dropped dusted emptied examined explored filled
fixed folded found gathered grabbed held hung kicked knitted lifted lit measured mended moved noticed
opened packed painted passed picked planted polished pulled pushed raised repaired returned rolled
sewed shared shook sketched sold sorted spotted stacked stirred swept tasted threw tied touched traded
unwrapped visited washed watched weighed wrapped juggled balanced launched rescued invented photographed
""".split())

TIMES = ("morning", "afternoon", "evening", "night", "weekend", "spring day", "summer day", "autumn day",
         "winter day", "holiday")
PREPOSITIONS = ("near", "behind", "under", "beside", "inside", "outside", "above", "below", "across",
                "along", "past", "around")
ADVERBS = ("carefully", "quickly", "slowly", "happily", "quietly", "proudly", "gently", "loudly", "bravely",
           "patiently", "secretly", "eagerly", "cheerfully", "clumsily")


def _sentence(rng: random.Random, name: str) -> str:
    adj, noun, place = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES)
    verb, prep, other = rng.choice(VERBS), rng.choice(PREPOSITIONS), rng.choice(PEOPLE)
    template = rng.randrange(9)
    if template == 0:
        return f"{name} {verb} the {adj} {noun} {prep} the {place}."
    if template == 1:
        return f"On {article(adj)} {adj} {rng.choice(TIMES)}, {name} {verb} {article(noun)} {noun}."
    if template == 2:
        return f"The {noun} was {adj}, so {name} {verb} it {rng.choice(ADVERBS)}."
    if template == 3:
        return f"{name} and {other} {verb} {article(adj)} {adj} {noun} together."
    if template == 4:
        return f"{capitalise(rng.choice(ADVERBS))}, {name} {verb} the {noun} and put it {prep} the {place}."
    if template == 5:
        return f"{other} said that the {noun} {prep} the {place} looked {adj}."
    if template == 6:
        return f"Everyone in the {place} {verb} {article(adj)} {adj} {noun} that {rng.choice(TIMES)}."
    if template == 7:
        return f"{capitalise(adj)} and {rng.choice(ADJECTIVES)}, the {noun} stood {prep} the {place}."
    return f"{capitalise(noun)} in hand, {name} {verb} the {rng.choice(NOUNS)} {rng.choice(ADVERBS)}."


def everyday_story(rng: random.Random) -> str:
    """A short, fact-free story of four to eight sentences about one person."""
    name = rng.choice(PEOPLE)
    return " ".join(_sentence(rng, name) for _ in range(rng.randint(4, 8)))
