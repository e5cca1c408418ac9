"""Pretraining: learning, exact resume, the NaN guard, atomic checkpoints, bad input, artifact reuse."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from minirlhf import pretrain
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.common import NonFiniteLossError
from minirlhf.config import PretrainConfig, make_config

SMALL = dict(preset="micro", vocab_size=320, n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=8,
             eval_interval=10, eval_batches=2, log_interval=5, warmup_steps=3, progress=False)


def cfg_for(tmp_path, corpus, **kw):
    return make_config(PretrainConfig, overrides={**SMALL, "out_dir": str(tmp_path / "out"), "corpus": corpus, **kw})


def test_learns_below_unigram_entropy_and_writes_artifacts(tmp_path, corpus_file):
    summary = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=80, lr=3e-3))
    assert summary["val_loss"] < summary["unigram_entropy"]
    d = tmp_path / "out" / "micro" / "pretrain"
    for name in ("model.pt", "config.json", "metrics.jsonl", "summary.json", "tokenizer.json", "ckpt.pt"):
        assert (d / name).exists(), name
    rows = [json.loads(line) for line in open(d / "metrics.jsonl")]
    assert rows[-1]["step"] == 80 and "val_loss" in rows[-1]
    ckpt = load_checkpoint(str(d / "model.pt"))  # weights_only=True
    assert ckpt["stage"] == "pretrain" and ckpt["model_config"]["vocab_size"] == 320


def test_resume_is_bit_identical(tmp_path, corpus_file):
    full = cfg_for(tmp_path / "a", corpus_file, max_steps=24, dropout=0.1)
    pretrain.run(full)
    half = cfg_for(tmp_path / "b", corpus_file, max_steps=24, dropout=0.1, stop_after=12)
    assert pretrain.run(half)["interrupted"]
    pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24, dropout=0.1, resume=True))
    a = load_checkpoint(str(tmp_path / "a" / "out" / "micro" / "pretrain" / "model.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "b" / "out" / "micro" / "pretrain" / "model.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_of_a_finished_run_evaluates_it_again(tmp_path, corpus_file):
    """--resume when ckpt.pt is already at max_steps trains nothing, evaluates once (the stage's summary
    needs val_loss) and logs no new row."""
    first = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12))
    metrics = tmp_path / "out" / "micro" / "pretrain" / "metrics.jsonl"
    rows = metrics.read_text()
    again = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, resume=True))
    assert again["steps"] == 12 and again["val_loss"] == first["val_loss"]  # the same weights, the same windows
    assert metrics.read_text() == rows


def test_resume_after_a_crash_logs_every_step_once(tmp_path, corpus_file, monkeypatch):
    """A crash at step 17 (checkpoint at 10, rows logged at 5, 10, 15) then --resume: the row of step 15,
    logged after the checkpoint, is not kept twice; the log is that of an uninterrupted run."""
    def log_of(d):
        return [json.loads(line) for line in open(d / "out" / "micro" / "pretrain" / "metrics.jsonl")]

    pretrain.run(cfg_for(tmp_path / "a", corpus_file, max_steps=24))
    real = pretrain.lm_loss
    calls = {"n": 0}

    def crashing(model, x, y):
        calls["n"] += model.training  # count training steps only, not validation batches
        if model.training and calls["n"] == 17:
            raise RuntimeError("simulated crash")
        return real(model, x, y)

    monkeypatch.setattr(pretrain, "lm_loss", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24))
    monkeypatch.setattr(pretrain, "lm_loss", real)
    assert [r["step"] for r in log_of(tmp_path / "b")] == [5, 10, 15]
    pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24, resume=True))
    a, b = log_of(tmp_path / "a"), log_of(tmp_path / "b")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [5, 10, 15, 20, 24]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # resume is exact on CPU


def metrics_and_weights(d):
    """metrics.jsonl rows (wall time aside) and model.pt's weights of the run under folder d."""
    run_dir = d / "out" / "micro" / "pretrain"
    rows = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(run_dir / "metrics.jsonl")]
    return rows, load_checkpoint(str(run_dir / "model.pt"))["model"]


@pytest.mark.parametrize("stops", [(3,), (7,), (10,), (15,), (3, 17)])
def test_stop_anywhere_and_resume_writes_the_rows_of_an_uninterrupted_run(tmp_path, corpus_file, stops):
    """--stop_after=k between metrics rows (3, 7, 17: rows every 5 steps), on a row (15) or on an evaluation
    (10), once or twice: the resumed run logs exactly the uninterrupted run's rows -- no extra row at k, no
    row averaging only the steps after k -- and ends with its weights (gradient clipping and dropout on)."""
    settings = dict(max_steps=24, dropout=0.1, grad_clip=0.5)
    pretrain.run(cfg_for(tmp_path / "a", corpus_file, **settings))
    for k in stops:
        assert pretrain.run(cfg_for(tmp_path / "b", corpus_file, **settings, stop_after=k,
                                    resume=k != stops[0]))["interrupted"]
    pretrain.run(cfg_for(tmp_path / "b", corpus_file, **settings, resume=True))
    (rows_a, a), (rows_b, b) = metrics_and_weights(tmp_path / "a"), metrics_and_weights(tmp_path / "b")
    assert [r["step"] for r in rows_a] == [5, 10, 15, 20, 24]
    assert rows_b == rows_a
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_other_settings_or_inputs(tmp_path, corpus_file):
    """ckpt.pt records the settings and the inputs' digests of the run that wrote it: --resume with another
    learning rate, or after the corpus changed, is an error that says what changed (it used to continue
    silently, and the result was then reused as if trained with the new settings)."""
    assert pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=24, lr=3e-3, stop_after=12))["interrupted"]
    with pytest.raises(ValueError, match=r"other settings \(--lr=0.003 then, 0.001 now\)"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=24, lr=1e-3, resume=True))
    with pytest.raises(ValueError, match=r"other settings \(--max_steps=24 then, 12 now\)"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=3e-3, resume=True))
    with open(corpus_file, "a") as f:
        f.write("<|endoftext|>One more document.")
    with pytest.raises(ValueError, match=r"other inputs \(corpus changed since\)"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=24, lr=3e-3, resume=True))


def test_a_fresh_run_removes_an_old_checkpoint_and_a_failed_resume_keeps_the_summary(tmp_path, corpus_file,
                                                                                     monkeypatch):
    """A run without --resume first removes the ckpt.pt an earlier run left: crashed before its own first
    checkpoint, it leaves none, so --resume says so instead of continuing the earlier run. And a --resume
    that fails keeps the finished run's summary.json (a plain rerun still reuses it)."""
    d = tmp_path / "out" / "micro" / "pretrain"
    pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=3e-3))
    assert (d / "ckpt.pt").exists()
    real = pretrain.lm_loss
    calls = {"n": 0}

    def crashing(model, x, y):
        calls["n"] += model.training
        if model.training and calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(model, x, y)

    monkeypatch.setattr(pretrain, "lm_loss", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=1e-3))
    monkeypatch.setattr(pretrain, "lm_loss", real)
    assert not (d / "ckpt.pt").exists()
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=1e-3, resume=True))

    finished = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=1e-3))
    (d / "ckpt.pt").unlink()
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=1e-3, resume=True))
    assert (d / "summary.json").exists()
    assert pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=12, lr=1e-3)) == finished  # reused, not retrained


def test_a_run_cut_by_max_minutes_is_kept_but_not_reused_and_resumes(tmp_path, corpus_file, capsys):
    """--max_minutes keeps the model it reached, marked stopped_early; the same command does not take it for
    a finished run (it trains again), and --resume --max_minutes=0 continues it to the weights and rows of
    an uninterrupted run."""
    cut = pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24, max_minutes=1e-9))
    assert cut["stopped_early"] and cut["steps"] == 1
    assert "reached at step 1 of 24" in capsys.readouterr().out
    again = pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24, max_minutes=1e-9))
    assert "reusing" not in capsys.readouterr().out and again["steps"] == 1  # trained again, not reused
    done = pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=24, resume=True))
    assert not done["stopped_early"] and done["steps"] == 24
    pretrain.run(cfg_for(tmp_path / "a", corpus_file, max_steps=24))
    (rows_a, a), (rows_b, b) = metrics_and_weights(tmp_path / "a"), metrics_and_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in rows_b] == [1, 5, 10, 15, 20, 24]  # the cut run's own row at step 1 stays
    assert rows_b[2:] == rows_a[1:]  # from step 10 on, the rows of an uninterrupted run (5's averages 2-5)


def test_validation_documents_are_never_copies_of_training_documents():
    """The corpus may repeat a document word for word; a copy of a training document is left out of the
    validation split (and counted), so validation loss and held-out perplexity read unseen text only."""
    docs = [f"doc {i}" for i in range(40)] + ["the same story"] * 10  # 10 copies of one document
    train, val, copies = pretrain.split_documents(docs, 0.3, seed=0)
    assert not set(val) & set(train)
    assert len(train) + len(val) + copies == len(docs) and len(train) == 35  # the training side as before
    assert copies == sum(d == "the same story" for d in docs) - train.count("the same story") - val.count("the same story")
    assert copies > 0 and "the same story" in train  # with these seeds the story is on both sides
    assert pretrain.split_documents([f"d{i}" for i in range(10)], 0.3, seed=0)[2] == 0  # no copies, nothing left out


def test_forced_nan_stops_naming_stage_step_and_term(tmp_path, corpus_file, monkeypatch):
    real = pretrain.lm_loss
    calls = {"n": 0}

    def poisoned(model, x, y):
        calls["n"] += model.training  # count training steps only, not validation batches
        loss = real(model, x, y)
        return loss * float("nan") if model.training and calls["n"] == 7 else loss

    monkeypatch.setattr(pretrain, "lm_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"pretrain: lm_loss is nan at step 7"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=20, eval_interval=5, log_interval=5))
    # the checkpoint from step 5 (before the NaN) is still the last one written
    ckpt = load_checkpoint(str(tmp_path / "out" / "micro" / "pretrain" / "ckpt.pt"))
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_stop_after_between_rows_never_checkpoints_nan_weights(tmp_path, corpus_file, monkeypatch):
    """--stop_after at a step that is not a logging step still runs the NaN guard on the steps since the
    last row before writing ckpt.pt: the error names the step, and the checkpoint on disk stays finite."""
    real = pretrain.lm_loss
    calls = {"n": 0}

    def poisoned(model, x, y):
        calls["n"] += model.training
        loss = real(model, x, y)
        return loss * float("nan") if model.training and calls["n"] == 6 else loss

    monkeypatch.setattr(pretrain, "lm_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"pretrain: lm_loss is nan at step 6"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=20, eval_interval=5, log_interval=5, stop_after=7))
    ckpt = load_checkpoint(str(tmp_path / "out" / "micro" / "pretrain" / "ckpt.pt"))
    assert ckpt["step"] == 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_checkpoint_killed_mid_write_leaves_old_file(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    script = ("import torch, sys; sys.path.insert(0, %r)\n"
              "from minirlhf.checkpoint import save_checkpoint\n"
              "print('start', flush=True)\n"
              "save_checkpoint(%r, {'step': 2, 'w': torch.randn(150_000_000)})\n") % (os.getcwd(), path)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"start"
    deadline = time.time() + 30
    while not os.path.exists(path + ".tmp") and time.time() < deadline:  # wait until the write has begun
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)  # the old, complete checkpoint
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_empty_corpus_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n<|endoftext|>\n ")
    with pytest.raises(ValueError, match="empty.txt"):
        pretrain.run(cfg_for(tmp_path, str(path), max_steps=2))


def test_jsonl_corpus_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello there"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        pretrain.run(cfg_for(tmp_path, str(bad), max_steps=2))
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "hello"}\n{"txt": "oops"}\n')
    with pytest.raises(ValueError, match=r"missing.jsonl:2.*text"):
        pretrain.run(cfg_for(tmp_path, str(missing), max_steps=2))


def test_unchanged_inputs_reuse_the_artifact(tmp_path, corpus_file, capsys):
    cfg = cfg_for(tmp_path, corpus_file, max_steps=5)
    first = pretrain.run(cfg)
    mtime = os.path.getmtime(tmp_path / "out" / "micro" / "pretrain" / "model.pt")
    second = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=5))
    assert "reusing" in capsys.readouterr().out and second == first
    assert os.path.getmtime(tmp_path / "out" / "micro" / "pretrain" / "model.pt") == mtime
    third = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=6))  # a changed config retrains
    assert third["steps"] == 6


def test_same_seed_same_numbers(tmp_path, corpus_file):
    a = pretrain.run(cfg_for(tmp_path / "a", corpus_file, max_steps=10))
    b = pretrain.run(cfg_for(tmp_path / "b", corpus_file, max_steps=10))
    assert a["val_loss"] == b["val_loss"]


def test_gpt2_tokenizer_without_local_files_is_a_clear_error(tmp_path, corpus_file, monkeypatch):
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "empty-cache"))
    with pytest.raises(RuntimeError, match="gpt2"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=2, tokenizer="gpt2"))
    with pytest.raises(ValueError, match="--tokenizer='bpe'"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=2, tokenizer="bpe"))


def test_a_run_stopped_after_writing_model_pt_is_not_reused_by_the_old_config(tmp_path, corpus_file, monkeypatch,
                                                                              capsys):
    """Config A finishes; config B writes its model.pt and then crashes before its summary. Rerunning A must
    retrain, not reuse A's old summary.json next to B's model.pt."""
    model_pt = str(tmp_path / "out" / "micro" / "pretrain" / "model.pt")
    pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=5))

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after model.pt")

    monkeypatch.setattr(pretrain, "world_metrics", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=6))
    assert load_checkpoint(model_pt)["step"] == 6  # B's model.pt is there
    monkeypatch.undo()
    capsys.readouterr()
    again = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=5))
    assert "reusing" not in capsys.readouterr().out
    assert again["steps"] == 5 and load_checkpoint(model_pt)["step"] == 5


def test_a_refused_pretrain_leaves_the_finished_folder_as_it_was(tmp_path, corpus_file):
    """A split too short for --block_size, a --resume with another vocabulary size, and an unknown --tokenizer
    are refused before anything in the folder changes: no new tokenizer.json next to the old model.pt (a
    later stage would pair them), no new token files, and the summary still reuses the finished model."""
    d = tmp_path / "out" / "micro" / "pretrain"
    finished = pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=4))
    names = ("summary.json", "config.json", "tokenizer.json", "train.bin", "val.bin", "model.pt", "ckpt.pt")
    before = {n: (d / n).read_bytes() for n in names}
    with pytest.raises(ValueError, match=r"the training split has \d+ tokens; sampling windows of block_size\+1"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=4, vocab_size=300, block_size=100_000))
    with pytest.raises(ValueError, match=r"other settings \(--vocab_size=320 then, 300 now\)"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=4, vocab_size=300, resume=True))
    with pytest.raises(ValueError, match="--tokenizer='foo': expected 'train' or 'gpt2'"):
        pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=4, tokenizer="foo"))
    assert {n: (d / n).read_bytes() for n in names} == before
    assert pretrain.run(cfg_for(tmp_path, corpus_file, max_steps=4)) == finished  # reused


def test_logging_and_time_limits_do_not_change_the_reuse_key():
    """--log_interval (how often rows are written) and --max_minutes (a run it cuts short is marked
    stopped_early, never reused) change nothing a finished run produced: the same key."""
    from minirlhf.common import config_key
    from minirlhf.config import SFTConfig

    plain = config_key(make_config(SFTConfig, "micro"), {"init": "x"}, "minirlhf.sft")
    assert config_key(make_config(SFTConfig, "micro", {"log_interval": 5, "max_minutes": 600.0}), {"init": "x"},
                      "minirlhf.sft") == plain
    assert config_key(make_config(SFTConfig, "micro", {"lr": 1e-4}), {"init": "x"}, "minirlhf.sft") != plain
    assert config_key(make_config(SFTConfig, "micro"), {"init": "x"}, "minirlhf.dpo") != plain  # other code


def test_the_code_digest_follows_imports_and_ignores_comments_and_docstrings(tmp_path):
    """code_digest on a package written here: the module's code and every package module it imports (at the top,
    inside a function, through another module, and the packages' __init__), as syntax trees without docstrings."""
    from minirlhf.common import code_digest

    root = tmp_path / "minirlhf"
    files = {"__init__.py": '"""The package."""\n',
             "stage.py": '"""A stage."""\nfrom minirlhf import helper\n\n\ndef run():\n'
                         '    """Runs."""\n    from minirlhf.sub.deep import f  # inside a function\n    return f()\n',
             "helper.py": "import minirlhf.leaf\n\nX = 1  # a constant\n",
             "leaf.py": "Y = 2\n",
             "sub/__init__.py": "",
             "sub/deep.py": "def f():\n    return 3\n",
             "unrelated.py": "Z = 4\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    def digest_after(name, text):
        (root / name).write_text(text)
        try:
            return code_digest("minirlhf.stage", str(root))
        finally:
            (root / name).write_text(files[name])

    plain = code_digest("minirlhf.stage", str(root))
    assert digest_after("helper.py", "import minirlhf.leaf\n\nX = 1  # another comment\n") == plain
    assert digest_after("stage.py", files["stage.py"].replace("Runs.", "Runs the stage.")) == plain
    assert digest_after("__init__.py", '"""Another docstring."""\n') == plain
    assert digest_after("unrelated.py", "Z = 5\n") == plain  # not imported
    for name, text in [("helper.py", "import minirlhf.leaf\n\nX = 2\n"), ("leaf.py", "Y = 3\n"),
                       ("sub/deep.py", "def f():\n    return 4\n"), ("sub/__init__.py", "W = 0\n"),
                       ("__init__.py", "V = 0\n"), ("stage.py", files["stage.py"].replace("f()", "f() + 1"))]:
        assert digest_after(name, text) != plain, name
    assert code_digest("minirlhf.stage", str(root)) == plain
    assert code_digest("minirlhf.helper", str(root)) != plain
    with pytest.raises(ValueError, match="no module 'minirlhf.nothing'"):
        code_digest("minirlhf.nothing", str(root))


def test_a_corpus_whose_validation_documents_are_all_copies_is_a_clear_error():
    with pytest.raises(ValueError, match="all 3 validation documents are copies of training documents"):
        pretrain.split_documents(["same text"] * 10, 0.3, seed=0)


def test_reusable_only_reads_and_begin_writing_removes_the_old_summary(tmp_path):
    """`reusable` decides without touching the folder (a run refused later for bad data loses nothing);
    `begin_writing`, once the inputs are checked, removes the old summary, copies the tokenizer in and
    writes config.json; with --resume it leaves whatever is there."""
    from minirlhf.common import begin_writing, reusable, write_json
    from minirlhf.config import SFTConfig, make_config

    (tmp_path / "model.pt").write_bytes(b"")
    write_json(str(tmp_path / "summary.json"), {"key": "a", "x": 1})
    # a training stage without the metrics its plots are drawn from is not finished (the report would fail)
    assert reusable(str(tmp_path), "a", force=False) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert reusable(str(tmp_path), "a", force=False) == {"key": "a", "x": 1}
    assert reusable(str(tmp_path), "a", force=False, artifacts=("summary.json",)) == {"key": "a", "x": 1}
    assert reusable(str(tmp_path), "a", force=False, artifacts=("prefs.jsonl",)) is None
    assert reusable(str(tmp_path), "a", force=True) is None and reusable(str(tmp_path), "b", force=False) is None
    assert reusable(str(tmp_path), "a", force=False, resume=True) is None
    assert (tmp_path / "summary.json").exists()  # still there: nothing is removed by deciding
    src = tmp_path / "init"
    src.mkdir()
    (src / "tokenizer.json").write_text("new tokenizer")
    (tmp_path / "tokenizer.json").write_text("old tokenizer")
    (tmp_path / "config.json").write_text("old config")
    resumed = make_config(SFTConfig, "micro", {"resume": True, "lr": 2e-3})
    begin_writing(str(tmp_path), resumed, tokenizer_from=str(src / "model.pt"))
    assert (tmp_path / "summary.json").exists() and (tmp_path / "config.json").read_text() == "old config"
    assert (tmp_path / "tokenizer.json").read_text() == "old tokenizer"
    fresh = make_config(SFTConfig, "micro", {"lr": 2e-3})
    begin_writing(str(tmp_path), fresh, tokenizer_from=str(src / "model.pt"))
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "tokenizer.json").read_text() == "new tokenizer"
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 2e-3


def test_tokenizer_key_names_kind_seed_and_val_fraction(tmp_path, monkeypatch):
    """A `--tokenizer=gpt2` run overwrites tokenizer.json; a later default run must train its own again
    rather than load GPT-2's. A different seed or val_fraction (other training documents) retrains too."""
    from minirlhf.tokenizer import Tokenizer

    import random

    rng = random.Random(0)
    words = "alpha beta gamma delta paris france capital river mountain".split()
    docs = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)]
    stand_in = Tokenizer.train("<|endoftext|>".join(docs), 280)  # GPT-2's files are not cached here
    monkeypatch.setattr(Tokenizer, "gpt2", classmethod(lambda cls: stand_in))
    trained = []
    real_train = Tokenizer.train.__func__
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda cls, *a, **k: trained.append(1) or
                                                        real_train(cls, *a, **k)))
    cfg = PretrainConfig(preset="micro", out_dir=str(tmp_path), vocab_size=300)
    first, _ = pretrain.ensure_tokenizer(cfg, docs, "digestA")
    assert first.n_vocab == 300 and len(trained) == 1
    assert pretrain.ensure_tokenizer(cfg, docs, "digestA")[0].n_vocab == 300 and len(trained) == 1  # reused
    cfg.tokenizer = "gpt2"
    assert pretrain.ensure_tokenizer(cfg, docs, "digestA")[0].n_vocab == stand_in.n_vocab == 280
    cfg.tokenizer = "train"
    again, _ = pretrain.ensure_tokenizer(cfg, docs, "digestA")
    assert again.n_vocab == 300 and len(trained) == 2 and again.encode(docs[0]) == first.encode(docs[0])
    cfg.seed = 1
    pretrain.ensure_tokenizer(cfg, docs, "digestA")
    assert len(trained) == 3
    cfg.val_fraction = 0.2
    pretrain.ensure_tokenizer(cfg, docs, "digestA")
    assert len(trained) == 4
    pretrain.ensure_tokenizer(cfg, docs, "digestA")
    assert len(trained) == 4  # and the same settings reuse it
