"""TinyWorld: a small synthetic universe of facts, requests, responses, a gold judge and annotators.

Real RLHF is judged by people we do not have, so every data set here is generated from a seed, and a
gold judge scores any (prompt, response) so that every claim about RLHF can be measured.

Modules, one concern each:

| module          | what it holds                                                                     |
|-----------------|-----------------------------------------------------------------------------------|
| `facts.py`      | the fact tables, per-preset sizes, the train / held-out split, cloze probes       |
| `corpus.py`     | pretraining documents: encyclopedia, lists, stories, quizzes, `Q: / A:` forum     |
| `tasks.py`      | task prompts by category, ideal responses (SFT), responses in controlled styles   |
| `judge.py`      | the gold judge and its rubric                                                     |
| `annotators.py` | simulated, noisy and biased preference labels; `label_pair`, `ranked_pair`        |
| `phrases.py`    | stock phrases and their detectors (refusal, flattery, rudeness, steps)            |
| `prose.py`      | fact-free everyday stories: more vocabulary for the bigger presets' tokenizers    |
| `build.py`      | `run(cfg)`: writes everything to out/<preset>/world/ with a summary.json          |

    from minirlhf.world import build_world, judge, label_pair, cloze_items
    world = build_world("tiny", seed=1337)              # in memory, instant
    cloze_items(world, "train")[0]                      # ('The capital of France is', 'Paris')
    judge("What is 3 plus 4?", "3 plus 4 is 7.<|end|>")  # ~0.84

Run `python lessons/00_world.py` for a guided tour, or `minirlhf world --preset tiny` to write the files.

Deliberate simplifications: the world is made of templates over small real-world tables; the judge
and the annotators match words, not meaning. Both are documented where they are defined.
"""

from minirlhf.world.annotators import TAU, agreement_stats, label_pair, preference_probability, ranked_pair
from minirlhf.world.corpus import extract_forum_answer, forum_prompt, make_corpus
from minirlhf.world.facts import World, build_world, cloze_items
from minirlhf.world.judge import category_of, judge, judge_terms, task_of
from minirlhf.world.phrases import is_flattering, is_refusal, is_rude, strip_end
from minirlhf.world.tasks import CATEGORIES, STYLES, Task, ideal_responses, make_response, tasks_for

__all__ = [
    "World", "build_world", "cloze_items", "make_corpus", "extract_forum_answer", "forum_prompt",
    "judge", "judge_terms", "category_of", "task_of", "label_pair", "ranked_pair", "preference_probability",
    "agreement_stats", "TAU", "is_refusal", "is_flattering", "is_rude", "strip_end", "CATEGORIES", "STYLES",
    "Task", "ideal_responses", "make_response", "tasks_for",
]
