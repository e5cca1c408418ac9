"""The micro pipeline end to end: every stage runs, artifacts and the report exist, reruns reuse."""

import json
import math
import os
import shutil

import pytest
import torch

from minirlhf.cli import main


def test_micro_pipeline_end_to_end(tmp_path, capsys, monkeypatch):
    out, plots = str(tmp_path / "out"), str(tmp_path / "plots")
    args = ["pipeline", "--preset=micro", f"--out_dir={out}", f"--plots_dir={plots}", "--progress=false"]
    assert main(args) == 0
    base = os.path.join(out, "micro")
    for stage in ("world", "pretrain", "sft", "pairs", "reward", "ppo", "dpo"):
        assert os.path.exists(os.path.join(base, stage, "summary.json")), stage
    for stage in ("pretrain", "sft", "pairs", "reward", "ppo", "dpo"):  # how each was made
        assert json.load(open(os.path.join(base, stage, "config.json")))["preset"] == "micro", stage
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo"):
        ckpt = os.path.join(base, stage, "model.pt")
        assert os.path.exists(ckpt) and os.path.exists(os.path.join(base, stage, "metrics.jsonl")), stage
    report = open(os.path.join(base, "report.md")).read()
    assert all(f"| {stage} |" in report for stage in ("pretrain", "sft", "reward", "ppo", "dpo"))
    assert "Models compared by the gold judge" in report and "How far the reward model can be trusted" in report
    assert "## Where the gold reward comes from" in report and "| held-out: fact |" in report
    assert all(os.path.exists(p) for p in json.load(open(os.path.join(base, "pipeline_summary.json")))["figures"])
    sft_summary = json.load(open(os.path.join(base, "sft", "summary.json")))
    assert -1 <= sft_summary["gold"] <= 1 and os.path.exists(os.path.join(base, "sft", "samples.jsonl"))
    rm_summary = json.load(open(os.path.join(base, "reward", "summary.json")))  # the on-policy check ran
    for split in ("heldout", "train"):
        assert rm_summary[f"on_policy_pairs_{split}"] > 0
        assert 0 <= rm_summary[f"on_policy_gold_accuracy_{split}"] <= 1
        assert 0 < rm_summary[f"on_policy_annotator_agreement_{split}"] < 1  # a mean of probabilities
        assert 0 <= rm_summary[f"on_policy_label_ceiling_{split}"] <= 1
        assert 0 <= rm_summary[f"on_policy_decisive_pairs_{split}"] <= rm_summary[f"on_policy_pairs_{split}"]
    assert 0 <= rm_summary["label_ceiling_gold_accuracy"] <= 1

    # a second run reuses every stage
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("pretrain", "sft", "pairs", "reward", "ppo", "dpo"):
        assert f"[{stage}] reusing" in printed, stage

    # and so does a run on a copy of the folder (the key does not depend on where out/ is)
    moved = str(tmp_path / "moved")
    shutil.copytree(out, moved)
    assert main([a if not a.startswith("--out_dir=") else f"--out_dir={moved}" for a in args]) == 0
    printed = capsys.readouterr().out
    for stage in ("pretrain", "sft", "pairs", "reward", "ppo", "dpo"):
        assert f"[{stage}] reusing" in printed, stage

    # a device or dtype written out as what "auto" gives on this machine is the same run: reused
    if not torch.cuda.is_available():
        assert main([*args, "--device=cpu", "--dtype=float32"]) == 0
        printed = capsys.readouterr().out
        for stage in ("pretrain", "sft", "pairs", "reward", "ppo", "dpo"):
            assert f"[{stage}] reusing" in printed, stage

    # the gold judge (the world's code) and a stage's own code are part of its key: a change measures it again.
    # Each check on its own copy of the finished runs, from the command that reuses the pipeline's DPO run.
    def stage_argv(stage, folder):
        return [stage, "--preset=micro", f"--out_dir={folder}", "--progress=false", "--truncate=true"]

    assert main(stage_argv("dpo", moved)) == 0 and "[dpo] reusing" in capsys.readouterr().out
    edited_judge, edited_code = str(tmp_path / "edited_judge"), str(tmp_path / "edited_code")
    shutil.copytree(moved, edited_judge)
    shutil.copytree(moved, edited_code)
    with monkeypatch.context() as m:
        m.setattr("minirlhf.world.build.source_digest", lambda: "an edited judge")
        assert main(stage_argv("dpo", edited_judge)) == 0
        assert "[dpo] reusing" not in capsys.readouterr().out
    from minirlhf import common
    digest = common.code_digest
    with monkeypatch.context() as m:  # DPO's code edited (its module or one it imports); SFT's code is not DPO's
        m.setattr(common, "code_digest", lambda module: "edited" if module == "minirlhf.dpo" else digest(module))
        assert main(stage_argv("sft", edited_code)) == 0 and "[sft] reusing" in capsys.readouterr().out
        assert main(stage_argv("dpo", edited_code)) == 0
        assert "[dpo] reusing" not in capsys.readouterr().out

    # best-of-n at n = 1 has no two samples of a prompt to compare: no pairwise accuracy, not 0
    assert main(["best-of-n", "--preset=micro", f"--out_dir={moved}", "--ns=1"]) == 0
    assert json.load(open(os.path.join(moved, "micro", "best_of_n", "summary.json")))["rm_pairwise_gold_accuracy"] is None
    assert "no pairwise accuracy" in capsys.readouterr().out

    # a reward model that reads another tokenizer is refused by name before any sampling
    other = os.path.join(moved, "micro", "reward_other")
    shutil.copytree(os.path.join(moved, "micro", "reward"), other)
    with open(os.path.join(other, "tokenizer.json"), "a") as f:
        f.write(" ")  # another file: another tokenizer, as far as the check can tell
    for stage in ("best-of-n", "ppo"):
        assert main([stage, "--preset=micro", f"--out_dir={moved}", f"--reward_model={other}/model.pt"]) == 1, stage
        assert f"--reward_model={other}/model.pt: its tokenizer" in capsys.readouterr().err, stage
    # and `eval` refuses a --reference that does not exist, or an --output in a missing folder, before evaluating
    sft_model = os.path.join(moved, "micro", "sft", "model.pt")
    assert main(["eval", "--preset=micro", f"--out_dir={moved}", f"--checkpoint={sft_model}",
                 f"--reference={moved}/nothing.pt"]) == 1
    assert f"--reference={moved}/nothing.pt does not exist" in capsys.readouterr().err
    assert main(["eval", "--preset=micro", f"--out_dir={moved}", f"--checkpoint={sft_model}",
                 f"--output={moved}/no/e.json"]) == 1
    assert f"the folder {moved}/no does not exist" in capsys.readouterr().err

    # `pairs --n_prompts=0`: the templated pairs alone (0 is a setting here, not "from the preset")
    assert main(["pairs", "--preset=micro", f"--out_dir={moved}"]) == 0
    assert "[pairs] reusing" in capsys.readouterr().out
    assert main(["pairs", "--preset=micro", f"--out_dir={moved}", "--n_prompts=0"]) == 0
    summary = json.load(open(os.path.join(moved, "micro", "pairs", "summary.json")))
    templated = sum(1 for _ in open(os.path.join(moved, "micro", "world", "prefs.jsonl")))
    rows = [json.loads(line) for line in open(os.path.join(moved, "micro", "pairs", "prefs.jsonl"))]
    assert summary["on_policy_pairs"] == 0 and summary["templated_pairs"] == templated == len(rows)
    assert {r["source"] for r in rows} == {"templated"}

    # `--pairing=best_worst --mix_templated=false`: at most one ranked on-policy pair per prompt, no templated
    assert main(["pairs", "--preset=micro", f"--out_dir={moved}", "--samples_per_prompt=4", "--pairing=best_worst",
                 "--mix_templated=false"]) == 0
    summary = json.load(open(os.path.join(moved, "micro", "pairs", "summary.json")))
    rows = [json.loads(line) for line in open(os.path.join(moved, "micro", "pairs", "prefs.jsonl"))]
    n_prompts = min(48, sum(1 for _ in open(os.path.join(moved, "micro", "world", "rl_prompts.jsonl"))))
    assert summary["templated_pairs"] == 0 and {r["source"] for r in rows} == {"on_policy"}
    assert len(rows) == summary["on_policy_pairs"] > 0 and len(rows) + summary["unranked_skipped"] == n_prompts
    assert all(r["chosen"] != r["rejected"] and r["p_chosen"] > 0 for r in rows)
    capsys.readouterr()
    assert main(["pairs", "--preset=micro", f"--out_dir={moved}", "--n_prompts=0", "--mix_templated=false"]) == 1
    assert "leaves no pairs" in capsys.readouterr().err


def test_judge_inputs_follow_the_judge_and_the_prompt_files(tmp_path, monkeypatch):
    """What a stage's gold numbers depend on is part of its reuse key: the world's code (the judge), the
    evaluation prompt files and a user's judge file, each by content."""
    from minirlhf.config import PPOConfig, make_config
    from minirlhf.evaluate import judge_inputs

    cfg = make_config(PPOConfig, "micro", {"out_dir": str(tmp_path)})
    before = judge_inputs(cfg)
    assert set(before) == {"world_source"}  # no world built: no prompt files to read
    world = tmp_path / "micro" / "world"
    world.mkdir(parents=True)
    (world / "eval_prompts.jsonl").write_text('{"prompt": "a"}\n')
    first = judge_inputs(cfg)["eval_prompts.jsonl"]
    (world / "eval_prompts.jsonl").write_text('{"prompt": "b"}\n')
    assert judge_inputs(cfg)["eval_prompts.jsonl"] != first
    monkeypatch.setattr("minirlhf.world.build.source_digest", lambda: "an edited judge")
    assert judge_inputs(cfg)["world_source"] == "an edited judge" != before["world_source"]
    mine = tmp_path / "my_judge.py"
    mine.write_text("def score(prompt, response):\n    return 1.0\n")
    cfg.gold_judge = f"{mine}:score"
    one = judge_inputs(cfg)["gold_judge"]
    mine.write_text("def score(prompt, response):\n    return -1.0\n")  # the same spec, another judge
    assert judge_inputs(cfg)["gold_judge"] != one


def test_micro_pipeline_under_bf16_autocast_the_gpu_precision(tmp_path):
    """--dtype=bfloat16 reaches every training stage (bf16 autocast, the CUDA default, here on the CPU), and
    the whole job runs through with finite numbers: the GPU's precision path, checked without a GPU."""
    out = str(tmp_path / "out")
    args = ["pipeline", "--preset=micro", f"--out_dir={out}", f"--plots_dir={tmp_path / 'plots'}", "--progress=false",
            "--dtype=bfloat16"]
    assert main(args) == 0
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo"):
        assert json.load(open(os.path.join(out, "micro", stage, "config.json")))["dtype"] == "bfloat16", stage
        rows = [json.loads(line) for line in open(os.path.join(out, "micro", stage, "metrics.jsonl"))]
        values = [v for r in rows for v in r.values() if isinstance(v, float)]
        assert values and all(math.isfinite(v) for v in values), stage


def test_pair_responses_disjoint_and_all_by_hand():
    from minirlhf.pairs import pair_responses
    samples = ["a<|end|>", "b<|end|>", "a<|end|>", "a<|end|>", "<|end|>", "c<|end|>"]
    # disjoint: (a, b) kept; (a, a) identical; (empty, c) has an empty response
    assert pair_responses(samples, "disjoint") == ([("a<|end|>", "b<|end|>")], 1, 1)
    # all: distinct a, b, empty, c (two repeats of a merged); the empty one dropped; 3 choose 2 pairs
    assert pair_responses(samples, "all") == ([("a<|end|>", "b<|end|>"), ("a<|end|>", "c<|end|>"),
                                               ("b<|end|>", "c<|end|>")], 2, 1)
    with pytest.raises(ValueError, match="--pairing='some'"):
        pair_responses(samples, "some")


def test_reward_model_section_with_old_and_new_summaries():
    """A reward summary written before the label-ceiling keys existed still gives a report (without them)."""
    from minirlhf.pipeline import _reward_model_section

    old = {"val_gold_accuracy": 0.8, "on_policy_gold_accuracy_train": 0.45, "on_policy_pairs_train": 10,
           "on_policy_gold_accuracy_heldout": 0.48, "on_policy_pairs_heldout": 12}
    text = _reward_model_section(old)[-1]
    assert "0.45 of the time on training-split prompts (10 pairs)" in text and "decisive" not in text
    new = dict(old, label_ceiling_gold_accuracy=0.91, on_policy_label_ceiling_train=0.38,
               on_policy_label_ceiling_heldout=0.76, on_policy_decisive_pairs_train=4,
               on_policy_decisive_accuracy_train=0.5, on_policy_decisive_pairs_heldout=6,
               on_policy_decisive_accuracy_heldout=0.25)
    text = _reward_model_section(new)[-1]
    assert "would reach 0.91 there" in text and "0.38 and 0.76 (below 0.5" in text
    assert "agrees 0.5 (4 pairs) and 0.25 (6 pairs)" in text
    assert _reward_model_section({}) == []


def test_report_compares_base_and_chat_models_on_the_same_prompts(tmp_path):
    """The fact-accuracy and refusal rows put the base model's forum-format numbers next to the chat models'
    numbers on the SAME forum-eval questions (not the training-split prompts); a reused world shows "reused",
    not this run's fraction of a second, as its own time."""
    from minirlhf.pipeline import write_report

    world = {"corpus_mb": 0.1, "seconds": 0.01, "reused": True}
    base = {"seconds": 50.0, "forum_gold": 0.2, "forum_fact_acc": 0.31, "forum_unsafe_refusal": 0.05}
    chat = {"seconds": 20.0, "gold": 0.4, "forum_prompts_gold": 0.5, "forum_prompts_fact_acc": 0.71,
            "fact_acc_train": 0.93, "forum_prompts_unsafe_refusal": 0.87, "refusal_sft_unsafe": 0.99}
    path = str(tmp_path / "report.md")
    write_report(path, "micro", [("world", 0.01, world), ("pretrain", 0.5, base), ("sft", 0.5, chat)])
    lines = open(path).read().splitlines()
    assert "| world | 0.0 | reused | corpus_mb = 0.1 |" in lines
    assert "| pretrain | 0.5 | 50.0 | forum_gold = 0.2, forum_unsafe_refusal = 0.05 |" in lines
    assert "| fact accuracy, the forum-eval questions | 0.31 | 0.71 |" in lines
    assert "| refusal of unsafe requests, the forum-eval questions | 0.05 | 0.87 |" in lines
    assert "| fact accuracy, training-split prompts |  | 0.93 |" in lines
    assert "| refusal, unsafe topics seen in SFT |  | 0.99 |" in lines


def test_forum_prompt_metrics_by_hand():
    """The chat model's fact accuracy and unsafe refusal over every forum-eval question, both splits."""
    from minirlhf.sft import forum_prompt_metrics

    samples = [{"category": "fact", "split": "train", "correct": True, "refusal": False},
               {"category": "fact", "split": "eval", "correct": False, "refusal": False},
               {"category": "fact", "split": "eval", "correct": True, "refusal": True},
               {"category": "unsafe", "split": "train", "correct": False, "refusal": True},
               {"category": "unsafe", "split": "eval", "correct": False, "refusal": False},
               {"category": "harmless", "split": "eval", "correct": False, "refusal": True}]
    m = forum_prompt_metrics(samples)
    assert m["forum_prompts_fact_acc"] == pytest.approx(2 / 3) and m["forum_prompts_unsafe_refusal"] == 0.5
    assert all(math.isnan(v) for v in forum_prompt_metrics([]).values())
