"""Every lesson runs, in order, on the `micro` preset, and writes the plots its docstring promises.

The lessons are what a reader runs first, so a lesson that stops with a traceback (a summary key it
expects but an older stage did not write, a renamed option) is a bug like any other. They build on each
other's artifacts (lesson 03 reuses lesson 02's SFT model, ...), so one test runs them all in a fresh
folder, each as its own process, the way a reader would: `python lessons/NN_name.py micro`. (Lesson 09
takes a model folder instead of a preset; given a preset name it says so and makes its own tiny GPT-2.)

Slow (about two minutes on 2 cores, plus lesson 03 once more alone in an empty folder): `pytest -m slow
tests/test_lessons.py`.
"""

import os
import re
import subprocess
import sys

import pytest

LESSONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lessons")


def promised_plots(path: str, preset: str) -> list[str]:
    """The plots/*.png files named in the lesson docstring's "Writes:" block, for `preset`."""
    with open(path, encoding="utf-8") as f:
        doc = f.read().split('"""')[1]
    block = re.search(r"^Writes:(.*?)(?=^\S|\Z)", doc, flags=re.M | re.S)
    names = re.findall(r"plots/[\w<>.-]+\.png", block.group(1)) if block else []
    return [n.replace("<preset>", preset) for n in names]


def test_promised_plots_are_read_from_the_docstring(tmp_path):
    lesson = tmp_path / "lesson.py"
    lesson.write_text('"""Lesson.\n\nWrites:   out/x/, plots/a_<preset>.png,\n          plots/b.png\n'
                      'Reads:    plots/not_this.png\n"""\n')
    assert promised_plots(str(lesson), "micro") == ["plots/a_micro.png", "plots/b.png"]


@pytest.mark.slow
def test_every_lesson_runs_on_micro(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    names = sorted(n for n in os.listdir(LESSONS) if re.match(r"\d\d_.*\.py$", n))
    assert names[0].startswith("00_") and len(names) >= 10, names
    for name in names:
        path = os.path.join(LESSONS, name)
        run = subprocess.run([sys.executable, path, "micro"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        output = run.stdout + run.stderr
        assert run.returncode == 0, f"{name} exited with {run.returncode}:\n{output[-3000:]}"
        missing = [p for p in promised_plots(path, "micro")
                   if not (os.path.exists(tmp_path / p) and os.path.getsize(tmp_path / p) > 0)]
        assert not missing, f"{name} did not write {missing}:\n{output[-2000:]}"


@pytest.mark.slow
def test_a_lesson_runs_on_its_own(tmp_path):
    # lessons/README.md: run them in order or on their own; lesson 03 needs pretraining and SFT, which it
    # must build itself in an empty folder (it once assumed lesson 02 had run)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, os.path.join(LESSONS, "03_reward_model.py"), "micro"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (tmp_path / "out" / "micro" / "reward" / "model.pt").exists()
