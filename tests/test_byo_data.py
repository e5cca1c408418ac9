"""Bring your own data and judge: every data flag runs its stage end to end from the command line on a
small user file in the TRL formats (standard and conversational), a malformed file is an error naming
file and line, and `--gold-judge module:function` replaces the world's gold judge."""

import json
import os
import re

import pytest

from minirlhf.cli import main
from minirlhf.config import SFTConfig, make_config
from minirlhf.data import DataError, read_kto

from conftest import english_like_documents

QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("What is two plus three?", "Two plus three is five."),
      ("Tell me about cats.", "Cats are small animals that like to sleep."),
      ("How do I pick a lock?", "Sorry, I can't help with that.")]
FAST = ["--preset=micro", "--progress=false", "--device=cpu"]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A user's files, one per format, and a micro base model pretrained from the JSONL corpus via --corpus."""
    root = tmp_path_factory.mktemp("byo")
    docs = english_like_documents(200) + [q + " " + a for q, a in QA] * 10
    f = {
        "root": root, "out": str(root / "out"),
        "corpus": write_jsonl(root / "corpus.jsonl", [{"text": d} for d in docs]),
        # SFT: conversational messages (with a system turn) and conversational prompt/completion
        "sft": write_jsonl(root / "sft.jsonl", [{"messages": [{"role": "system", "content": "Be brief."}, user(q),
                                                              assistant(a)]} for q, a in QA] * 3),
        "sft_eval": write_jsonl(root / "sft_eval.jsonl", [{"prompt": [user(q)], "completion": [assistant(a)]}
                                                          for q, a in QA]),
        # preferences: explicit conversational prompt, and TRL's implicit prompt (two full conversations)
        "prefs": write_jsonl(root / "prefs.jsonl", [{"prompt": [user(q)], "chosen": [assistant(a)],
                                                     "rejected": [assistant("No.")]} for q, a in QA] * 3),
        "prefs_implicit": write_jsonl(root / "prefs_implicit.jsonl", [{"chosen": [user(q), assistant(a)],
                                                                       "rejected": [user(q), assistant("Go away.")]}
                                                                      for q, a in QA] * 2),
        # RL prompts: a standard string and a conversation with a system turn
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": q} for q, _ in QA] +
                               [{"prompt": [{"role": "system", "content": "Be kind."}, user(q)]} for q, _ in QA]),
    }
    assert main(["pretrain", *FAST, f"--out_dir={f['out']}", f"--corpus={f['corpus']}", "--vocab_size=320",
                 "--max_steps=3", "--n_layer=1", "--n_embd=32", "--n_head=2"]) == 0
    f["base"] = os.path.join(f["out"], "micro", "pretrain", "model.pt")
    return f


def summary(f, stage):
    with open(os.path.join(f["out"], "micro", stage, "summary.json")) as fh:
        return json.load(fh)


def test_every_data_flag_runs_its_stage(files):
    f = files
    out = f"--out_dir={f['out']}"
    assert summary(f, "pretrain")["steps"] == 3  # --corpus (JSONL {"text"}), run by the fixture
    assert main(["sft", *FAST, out, f"--init={f['base']}", f"--sft-data={f['sft']}", f"--eval_data={f['sft_eval']}",
                 "--max_steps=3"]) == 0
    assert summary(f, "sft")["examples"] == 12
    assert main(["reward", *FAST, out, f"--prefs={f['prefs']}", f"--eval_prefs={f['prefs_implicit']}",
                 f"--prompts={f['prompts']}", "--max_steps=3", "--calibration_prompts=8", "--max_new_tokens=8"]) == 0
    assert summary(f, "reward")["train_pairs"] == 12 and summary(f, "reward")["val_pairs"] == 8
    assert main(["dpo", *FAST, out, f"--prefs={f['prefs_implicit']}", f"--eval_prefs={f['prefs']}",
                 "--max_steps=2", "--batch_size=4"]) == 0
    assert summary(f, "dpo")["steps"] == 2
    assert main(["ppo", *FAST, out, f"--prompts={f['prompts']}", "--iterations=2", "--batch_size=8",
                 "--minibatch_size=8", "--max_new_tokens=8"]) == 0
    assert summary(f, "ppo")["iterations"] == 2


def test_sft_data_is_an_alias_of_data(capsys):
    assert make_config(SFTConfig, overrides=["--sft-data=mine.jsonl"]).data == "mine.jsonl"
    assert make_config(SFTConfig, overrides={"sft_data": "mine.jsonl"}).data == "mine.jsonl"
    assert main(["sft", "--help"]) == 0
    assert "--sft-data         the same as --data" in capsys.readouterr().out


@pytest.mark.parametrize("stage, flag, lines, message", [
    ("pretrain", "corpus", [{"text": "fine"}, {"txt": "typo"}], r':2: key "text" is missing'),
    ("sft", "sft-data", [{"messages": [user("hi"), assistant("hello")]}, {"prompt": "x", "completion": "y"},
                         {"messages": [user("hi"), {"role": "bot", "content": "hello"}]}],
     r':3: key "messages\[1\].role" must be one of "system", "user", "assistant", got "bot"'),
    ("reward", "prefs", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": 3, "rejected": "b"}],
     r':2: key "chosen" must be a non-empty string or a list with one assistant message, got int'),
    ("dpo", "prefs", [{"chosen": [user("q"), assistant("a")], "rejected": [user("other"), assistant("b")]}],
     r':1: keys "chosen" and "rejected" must share the same prompt'),
    ("ppo", "prompts", ['{"prompt": "unterminated'], r':1: not valid JSON'),
])
def test_malformed_user_file_names_file_and_line(files, tmp_path, capsys, stage, flag, lines, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    args = [stage, *FAST, f"--out_dir={files['out']}", f"--{flag}={bad}", "--force"]
    if stage == "sft":
        args.append(f"--eval_data={files['sft_eval']}")
    if stage in ("reward", "dpo"):
        args.append(f"--eval_prefs={files['prefs']}")
    if stage == "reward":
        args.append(f"--prompts={files['prompts']}")
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"minirlhf {stage}: error: {bad}" in err
    assert re.search(message, err), err


def test_read_kto_accepts_trl_formats_and_names_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": [user("What is two plus three?")], "completion": [assistant("Five.")], "label": True},
        {"prompt": "What is two plus three?", "completion": "Seven.", "label": False},
    ])
    rows = read_kto(path)
    assert [r["label"] for r in rows] == [True, False]
    assert rows[0]["prompt"] == rows[1]["prompt"] == [user("What is two plus three?")]
    assert [r["completion"] for r in rows] == ["Five.", "Seven."]
    bad = write_jsonl(tmp_path / "kto_bad.jsonl", [{"prompt": "q", "completion": "a", "label": True},
                                                   {"prompt": "q", "completion": "a", "label": "yes"}])
    with pytest.raises(DataError, match=f'{bad}:2: key "label" must be a boolean'):
        read_kto(bad)


# ----------------------------------------------------------------------------------------------------
# bring your own judge


@pytest.fixture(scope="module")
def judged(files):
    """A micro world, a judge file, and an SFT model trained on the user's data and evaluated (on the world's
    prompts) by the user's judge through `--gold-judge`."""
    root = files["root"]
    wout = str(root / "wout")
    assert main(["world", "--preset=micro", f"--out_dir={wout}"]) == 0
    judge = root / "my_judges.py"
    judge.write_text("def constant(prompt, response):\n    return 0.125\n\n"
                     "def wordy(prompt, response):\n    return 'good'\n\nraise_me = 3\n")
    assert main(["sft", *FAST, f"--out_dir={wout}", f"--init={files['base']}", f"--sft-data={files['sft']}",
                 f"--eval_data={files['sft_eval']}", "--max_steps=1", f"--gold-judge={judge}:constant"]) == 0
    return {"wout": wout, "judge": str(judge), "checkpoint": os.path.join(wout, "micro", "sft", "model.pt")}


def test_gold_judge_replaces_the_world_judge(judged, tmp_path, monkeypatch):
    with open(os.path.join(judged["wout"], "micro", "sft", "summary.json")) as fh:
        assert json.load(fh)["gold"] == 0.125  # the SFT stage evaluated with the user's judge
    # minirlhf eval, with the judge imported by module name
    monkeypatch.syspath_prepend(os.path.dirname(judged["judge"]))
    output = str(tmp_path / "eval.json")
    assert main(["eval", f"--checkpoint={judged['checkpoint']}", "--preset=micro", f"--out_dir={judged['wout']}",
                 "--n_train=0", "--device=cpu", f"--output={output}", "--gold-judge=my_judges:constant"]) == 0
    with open(output) as fh:
        result = json.load(fh)
    assert result["gold_judge"] == "my_judges:constant"
    assert result["metrics"]["gold"] == result["metrics"]["gold_all"] == 0.125
    cats = result["gold_by_category"]  # every prompt in exactly one split/category group, each at the constant
    assert cats and all(v["gold"] == 0.125 for v in cats.values())
    assert sum(v["samples"] for v in cats.values()) == result["metrics"]["n_prompts"]


@pytest.mark.parametrize("spec, code, message", [
    ("no_such_module_xyz:f", 2, "cannot import 'no_such_module_xyz'"),
    ("{judge}:missing", 2, "has no function 'missing'"),
    ("{judge}:raise_me", 2, "has no function 'raise_me'"),
    ("just_a_name", 2, "expected module:function"),
    ("{judge}:wordy", 1, "returned str 'good', expected a float"),
])
def test_bad_gold_judge_is_a_clear_error(judged, capsys, spec, code, message):
    args = ["eval", f"--checkpoint={judged['checkpoint']}", "--preset=micro", f"--out_dir={judged['wout']}",
            "--n_train=0", "--device=cpu", f"--gold-judge={spec.format(judge=judged['judge'])}"]
    capsys.readouterr()
    assert main(args) == code
    assert message in capsys.readouterr().err


def test_missing_world_file_names_the_option_that_replaces_it(tmp_path):
    from types import SimpleNamespace

    from minirlhf.sft import world_file

    cfg = SimpleNamespace(out_dir=str(tmp_path), preset="micro")
    with pytest.raises(FileNotFoundError, match=r"sft_eval.jsonl does not exist: pass --eval_data=FILE, or build"):
        world_file(cfg, "sft_eval.jsonl", "--eval_data")


def test_eval_over_several_seeds_reports_mean_and_std(judged, tmp_path):
    """--seeds: one evaluation per seed, each equal to a single-seed run, then their mean and sample std."""
    common = ["eval", f"--checkpoint={judged['checkpoint']}", "--preset=micro", f"--out_dir={judged['wout']}",
              "--n_train=8", "--device=cpu", "--max_new_tokens=8"]
    singles = []
    for seed in (3, 4):
        assert main([*common, f"--seed={seed}", f"--output={tmp_path / f'seed{seed}.json'}"]) == 0
        with open(tmp_path / f"seed{seed}.json") as fh:
            singles.append(json.load(fh)["metrics"])
    assert main([*common, "--seeds=3,4", f"--output={tmp_path / 'both.json'}"]) == 0
    with open(tmp_path / "both.json") as fh:
        both = json.load(fh)
    assert both["seeds"] == [3, 4] and both["per_seed"] == {"3": singles[0], "4": singles[1]}
    a, b = singles[0]["length"], singles[1]["length"]
    assert a != b  # different samples, or the mean and std below would prove little
    assert both["metrics"]["length"] == pytest.approx((a + b) / 2)
    assert both["std"]["length"] == pytest.approx(abs(a - b) / 2 ** 0.5)  # sample std of two numbers
    # the per-category table pools both seeds' samples: twice the prompts, and the mean of the two runs' gold
    assert sum(v["samples"] for v in both["gold_by_category"].values()) == 2 * singles[0]["n_prompts"]
    weighted = sum(v["gold"] * v["samples"] for v in both["gold_by_category"].values()) / (2 * singles[0]["n_prompts"])
    assert weighted == pytest.approx((singles[0]["gold_all"] + singles[1]["gold_all"]) / 2, abs=1e-3)


@pytest.mark.parametrize("seeds", ["1", "1,1", "1,x"])
def test_bad_seeds_are_a_clear_error(judged, capsys, seeds):
    capsys.readouterr()
    assert main(["eval", f"--checkpoint={judged['checkpoint']}", "--preset=micro", f"--out_dir={judged['wout']}",
                 f"--seeds={seeds}"]) == 1
    err = capsys.readouterr().err
    assert f"--seeds={seeds!r}" in err


def test_eval_paths_are_checked_before_the_evaluation(judged, tmp_path, capsys):
    """An --output that is a folder, and a --preset whose world is not built, fail at once with a one-line
    message (not an IsADirectoryError after the whole evaluation, nor a bare missing summary.json)."""
    common = ["eval", f"--checkpoint={judged['checkpoint']}", f"--out_dir={judged['wout']}", "--device=cpu"]
    capsys.readouterr()
    assert main([*common, "--preset=micro", f"--output={tmp_path}"]) == 1
    assert f"--output={tmp_path} is a folder; give a file name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no stray eval.json.tmp
    assert main([*common, "--preset=tiny"]) == 1
    assert "is --preset=tiny the checkpoint's preset?" in capsys.readouterr().err


def test_a_folder_given_for_a_file_is_a_one_line_error(files, capsys):
    """`--init=out/micro/pretrain` (the folder, not its model.pt) is a plausible slip: exit 1, no traceback."""
    capsys.readouterr()
    folder = os.path.dirname(files["base"])
    assert main(["sft", *FAST, f"--out_dir={files['out']}", f"--init={folder}", f"--sft-data={files['sft']}",
                 f"--eval_data={files['sft_eval']}", "--max_steps=1"]) == 1
    err = capsys.readouterr().err
    assert f"{folder} is a folder where a file was expected" in err and "Traceback" not in err


def test_kto_on_its_own_data_needs_no_pairs_file(files, tmp_path):
    """--loss=kto --kto_data=FILE reads only FILE (and the validation pairs): no pairs stage needed."""
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": q, "completion": a, "label": True} for q, a in QA]
                      + [{"prompt": q, "completion": "No.", "label": False} for q, _ in QA])
    out = str(tmp_path / "out")
    assert not os.path.exists(os.path.join(out, "micro", "pairs", "prefs.jsonl"))
    assert main(["dpo", *FAST, f"--out_dir={out}", "--loss=kto", f"--kto_data={kto}", f"--init={files['base']}",
                 f"--reference={files['base']}", f"--eval_prefs={files['prefs']}", "--max_steps=1",
                 "--batch_size=4"]) == 0
