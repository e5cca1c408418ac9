"""`minirlhf pipeline`: the main job. Every stage in order, then a report and the plots.

    minirlhf pipeline                    # tiny on CPU (11 to 21 minutes on 2 cores, by machine), small on CUDA
    minirlhf pipeline --preset micro     # seconds: what the tests run
    minirlhf pipeline --force            # rerun every stage even if its inputs are unchanged
    minirlhf pipeline --dtype=bfloat16   # the training stages under bf16 autocast (the default on CUDA) on any device

Stages so far: world -> tokenizer + pretrain -> SFT -> on-policy pairs -> reward model -> PPO and DPO ->
evaluation of the base model (in the forum format it knows) and of the chat models. Each stage writes `out/<preset>/<stage>/` and is reused when
its config and inputs are unchanged, so a second run only redoes what changed. The report,
`out/<preset>/report.md`, is a table of stage, wall time and key metrics; figures go to `plots/`.

Under torchrun (`torchrun --nproc_per_node=N -m minirlhf pipeline ...`) every process runs this same
function: the training stages (pretrain, SFT, reward, PPO, DPO) are data-parallel; the world and the
on-policy pairs are built by rank 0 while the others wait; rank 0 alone writes the report and the plots.

Deliberate simplifications: stages run one after another in this process (no scheduler); a stage that
fails stops the pipeline with its own error message.
"""

from __future__ import annotations

import os
import time

from minirlhf import distributed as dist
from minirlhf import plots
from minirlhf.common import write_json
from minirlhf.config import PipelineConfig, PretrainConfig, WorldConfig, make_config


def _stage(name: str, fn, cfg, rows: list, timings: dict, data_parallel: bool = True):
    """Run one stage; a stage that is not data-parallel runs on rank 0 and its summary is shared."""
    dist.print0(f"\n=== {name} ===")
    t0 = time.perf_counter()
    summary = fn(cfg) if data_parallel else dist.on_main(fn, cfg)
    timings[name] = time.perf_counter() - t0
    rows.append((name, timings[name], summary))
    return summary


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(path: str, preset: str, rows: list) -> None:
    """Write the markdown report to `path`: one line per stage (this run's and the stage's own wall time, its
    REPORT_KEYS metrics), the base, SFT, PPO and DPO models compared by the gold judge (COMPARISON), the gold reward per
    prompt category and how far the reward model can be trusted.

    rows: (stage name, seconds in this run, stage summary) in run order.
    """
    from minirlhf.evaluate import FORUM_SAMPLES

    lines = [f"# minirlhf report: preset `{preset}`", "",
             "`this run` is this invocation's wall time (a reused stage takes a fraction of a second); "
             "`stage` is the stage's own wall time when it last ran (`reused` for a world that was already "
             "built).", "",
             "| stage | this run (s) | stage (s) | key metrics |", "|---|---:|---:|---|"]
    for name, seconds, summary in rows:
        keys = REPORT_KEYS.get(name, [])
        metrics = ", ".join(f"{k} = {_fmt(summary[k])}" for k in keys if k in summary)
        own = summary.get("seconds")  # (a reused world records no build time: its "seconds" is this run's)
        own = "reused" if summary.get("reused") else "" if own is None else f"{own:.1f}"
        lines.append(f"| {name} | {seconds:.1f} | {own} | {metrics} |")
    by_name = {name: summary for name, _, summary in rows}
    models = [("base (forum format)", by_name.get("pretrain"), 1)] + \
             [(name.upper(), by_name[name], 2) for name in ("sft", "ppo", "dpo") if name in by_name]
    lines += ["", "## Models compared by the gold judge", "",
              "The base model is asked the forum-eval questions in the forum format it saw in pretraining "
              "(`Q: ...\\nA:`, its answer cut at the end of the line); chat models are asked the same questions "
              "in the chat format (the rows that name the forum-eval questions: the same prompts in every column), "
              "and the world's held-out and training-split prompts (the other rows; perplexity is on held-out "
              f"pretraining text). Temperature 1, one sample per prompt ({FORUM_SAMPLES} per forum-eval question) "
              "and one seed: on `tiny` the held-out gold of one model moves by a few hundredths from seed "
              "to seed (std 0.03 over five seeds for SFT), so compare smaller differences with "
              "`minirlhf eval --checkpoint=... --seeds=1,2,3,4,5`.", "",
              "| metric | " + " | ".join(m for m, _, _ in models) + " |", "|---|" + "---:|" * len(models)]
    for label, base_key, chat_key in COMPARISON:
        cells = []
        for _, summary, col in models:
            k = base_key if col == 1 else chat_key
            cells.append(_fmt(summary[k]) if summary and k and k in summary else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _category_section(os.path.dirname(path), [name for name in ("sft", "ppo", "dpo") if name in by_name])
    lines += _reward_model_section(by_name.get("reward") or {})
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _category_section(base: str, stages: list[str]) -> list[str]:
    """Report lines: each chat model's mean gold score per prompt category, held-out prompts first, read from
    the stages' samples.jsonl (their final evaluation), so that a gain or a loss can be traced to its prompts."""
    from minirlhf.evaluate import SPLIT_NAMES, gold_by_category, read_rows

    tables = {name: gold_by_category(read_rows(os.path.join(base, name, "samples.jsonl"))) for name in stages
              if os.path.exists(os.path.join(base, name, "samples.jsonl"))}
    if not tables:
        return []
    groups = sorted(set().union(*tables.values()), key=lambda k: (k[0] != "eval", k[0], k[1]))
    lines = ["", "## Where the gold reward comes from", "",
             "Mean gold score per prompt category in each model's final evaluation (n = prompts; one sample each, "
             "so a category of a few prompts moves a lot from seed to seed).", "",
             "| prompts | n | " + " | ".join(name.upper() for name in tables) + " |",
             "|---|---:|" + "---:|" * len(tables)]
    for key in groups:
        n = next(t[key][1] for t in tables.values() if key in t)
        cells = [f"{t[key][0]:.3f}" if key in t else "" for t in tables.values()]
        lines.append(f"| {SPLIT_NAMES.get(key[0], key[0])}: {key[1]} | {n} | " + " | ".join(cells) + " |")
    return lines


def _reward_model_section(rm: dict) -> list[str]:
    """Report lines: how well the reward model ranks the policy's own samples (what PPO optimises).

    The label-ceiling and decisive-pair sentences need a reward summary written since they were added;
    an older one (a reused stage) leaves them out rather than failing."""
    if "on_policy_gold_accuracy_heldout" not in rm:
        return []
    from minirlhf.reward import DECISIVE_GAP

    text = (f"On its validation pairs (mostly templated styles) the reward model agrees with the gold ordering "
            f"{_fmt(rm.get('val_gold_accuracy', float('nan')))} of the time")
    if "label_ceiling_gold_accuracy" in rm:
        text += (f"; a perfect model of the annotators' preferences would reach "
                 f"{_fmt(rm['label_ceiling_gold_accuracy'])} there (their noise averages out, their bias does not)")
    text += (f". On pairs of the SFT model's own samples (4 per prompt, every pair whose gold scores differ) -- "
             f"what PPO and best-of-n ask it to rank -- it agrees {_fmt(rm['on_policy_gold_accuracy_train'])} of the "
             f"time on training-split prompts ({rm['on_policy_pairs_train']} pairs) and "
             f"{_fmt(rm['on_policy_gold_accuracy_heldout'])} on held-out prompts ({rm['on_policy_pairs_heldout']} "
             f"pairs); 0.5 is chance.")
    if "on_policy_decisive_pairs_heldout" in rm:
        text += (f" A perfect model of the annotators would reach {_fmt(rm['on_policy_label_ceiling_train'])} and "
                 f"{_fmt(rm['on_policy_label_ceiling_heldout'])}")
        if min(rm["on_policy_label_ceiling_train"], rm["on_policy_label_ceiling_heldout"]) < 0.5:
            text += (" (below 0.5 where most pairs are near-ties such as two wordings of one right answer: the gold "
                     "judge prefers the shorter, the annotators the longer)")
        text += (f". On the decisive pairs alone (gold scores at least "
                 f"{DECISIVE_GAP} apart: a right against a wrong answer) it agrees "
                 f"{_fmt(rm['on_policy_decisive_accuracy_train'])} ({rm['on_policy_decisive_pairs_train']} pairs) "
                 f"and {_fmt(rm['on_policy_decisive_accuracy_heldout'])} ({rm['on_policy_decisive_pairs_heldout']} "
                 f"pairs).")
    text += (f" Where it is near chance, optimising it cannot raise the gold reward, and what it does reward "
             f"consistently is the annotators' bias (it prefers an added flattering opener on "
             f"{_fmt(rm.get('rm_prefers_flattery', float('nan')))} and an added filler sentence on "
             f"{_fmt(rm.get('rm_prefers_length', float('nan')))} of probe prompts).")
    return ["", "## How far the reward model can be trusted", "", text]


REPORT_KEYS = {
    "world": ["corpus_mb", "annotator_agreement", "label_noise"],
    "pretrain": ["val_loss", "unigram_entropy", "cloze_accuracy_train", "cloze_accuracy_heldout", "forum_gold",
                 "forum_unsafe_refusal", "tokens_per_second", "params"],
    "sft": ["val_loss", "truncated", "gold", "fact_acc_train", "fact_acc_heldout", "refusal_sft_unsafe", "refusal_heldout_unsafe",
            "over_refusal", "eos_rate", "heldout_ppl"],
    "pairs": ["on_policy_pairs", "templated_pairs", "on_policy_agreement"],
    "ppo": ["gold", "proxy", "kl_k1_heldout", "kl_k1", "length", "iterations_per_second", "rollout_tokens_per_second"],
    "dpo": ["gold", "kl_k1_heldout", "kl_k1", "val_rewards/accuracies", "length"],
    "reward": ["dropped_pairs", "val_accuracy", "val_gold_accuracy", "annotator_gold_agreement",
               "label_ceiling_gold_accuracy", "on_policy_gold_accuracy_heldout", "on_policy_gold_accuracy_train",
               "corr_score_length", "raw_mean", "raw_std"],
}

# rows of the model comparison table: (label, summary key of the base model, key of the chat models)
COMPARISON = [("gold reward, the forum-eval questions", "forum_gold", "forum_prompts_gold"),
              ("gold reward, held-out prompts", None, "gold"),
              ("gold reward, training-split prompts", None, "gold_train"),
              ("fact accuracy, the forum-eval questions", "forum_fact_acc", "forum_prompts_fact_acc"),
              ("refusal of unsafe requests, the forum-eval questions", "forum_unsafe_refusal",
               "forum_prompts_unsafe_refusal"),
              ("fact accuracy, training-split prompts", None, "fact_acc_train"),
              ("refusal, unsafe topics seen in SFT", None, "refusal_sft_unsafe"),
              ("refusal, held-out unsafe topics", None, "refusal_heldout_unsafe"),
              ("over-refusal of harmless requests", None, "over_refusal"),
              ("flattery rate", None, "flattery_rate"),
              ("EOS rate", None, "eos_rate"),
              ("proxy (reward-model) reward, held-out prompts", None, "proxy"),
              ("KL to the SFT model, held-out prompts (nats per response)", None, "kl_k1_heldout"),
              ("KL to the SFT model, all evaluation prompts", None, "kl_k1"),
              ("response length (tokens)", None, "length"),
              ("held-out perplexity (alignment tax)", "heldout_ppl", "heldout_ppl")]


def run(cfg: PipelineConfig) -> dict:
    """`minirlhf pipeline`: world, pretrain, SFT, pairs, reward, PPO and DPO in order, then the report and the plots.

    Every stage gets the pipeline's preset (default: `default_preset()`), seed, out_dir and --force (the training
    stages also device, dtype and progress; SFT, reward and DPO --truncate), and reuses its own finished run when its
    config and inputs are unchanged. Rank 0 then writes out/<preset>/report.md, out/<preset>/pipeline_summary.json and
    the pretrain, SFT and reward loss curves under plots_dir, and returns {"preset", "seconds", "stage_seconds",
    "report", "figures"} (rank 0's, on every rank under torchrun). The report and the plots are rewritten on every run.
    """
    from minirlhf.config import DPOConfig, PairsConfig, PPOConfig, RewardConfig, SFTConfig, default_preset
    from minirlhf.dpo import run as dpo
    from minirlhf.pairs import run as make_pairs
    from minirlhf.ppo import run as ppo
    from minirlhf.pretrain import run as pretrain
    from minirlhf.reward import run as train_reward
    from minirlhf.sft import run as sft
    from minirlhf.world.build import run as build_world

    preset = cfg.preset or default_preset()
    common = dict(preset=preset, seed=cfg.seed, out_dir=cfg.out_dir, force=cfg.force)
    rows: list = []
    timings: dict = {}
    t0 = time.perf_counter()

    _stage("world", build_world, make_config(WorldConfig, overrides=common), rows, timings, data_parallel=False)
    train_common = dict(common, device=cfg.device, dtype=cfg.dtype, progress=cfg.progress)
    _stage("pretrain", pretrain, make_config(PretrainConfig, overrides=train_common), rows, timings)
    _stage("sft", sft, make_config(SFTConfig, overrides=dict(train_common, truncate=cfg.truncate)), rows, timings)
    _stage("pairs", make_pairs, make_config(PairsConfig, overrides=dict(common, device=cfg.device)), rows, timings,
           data_parallel=False)
    _stage("reward", train_reward, make_config(RewardConfig, overrides=dict(train_common, truncate=cfg.truncate)),
           rows, timings)
    _stage("ppo", ppo, make_config(PPOConfig, overrides=train_common), rows, timings)
    _stage("dpo", dpo, make_config(DPOConfig, overrides=dict(train_common, truncate=cfg.truncate)), rows, timings)

    if not dist.is_main():
        return dist.share()  # rank 0 alone writes the report and the plots; its summary comes back
    os.makedirs(cfg.plots_dir, exist_ok=True)
    base = os.path.join(cfg.out_dir, preset)
    entropy = rows[1][2].get("unigram_entropy")  # the pretrain summary
    figures = [plots.loss_curve(os.path.join(base, "pretrain", "metrics.jsonl"),
                                os.path.join(cfg.plots_dir, f"pretrain_loss_{preset}.png"),
                                title=f"Pretraining loss ({preset})",
                                baseline=(entropy, "unigram entropy") if entropy else None)]
    figures += [plots.loss_curve(os.path.join(base, stage, "metrics.jsonl"),
                                 os.path.join(cfg.plots_dir, f"{stage}_loss_{preset}.png"), title=f"{title} ({preset})")
                for stage, title in (("sft", "SFT loss"), ("reward", "Reward model loss (Bradley-Terry)"))]
    report = os.path.join(base, "report.md")
    write_report(report, preset, rows)
    total = time.perf_counter() - t0
    summary = {"preset": preset, "seconds": round(total, 1), "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
               "report": report, "figures": figures}
    write_json(os.path.join(base, "pipeline_summary.json"), summary)
    print(f"\n[pipeline] done in {total:.0f} s; report: {report}; figures: {', '.join(figures)}")
    return dist.share(summary)
