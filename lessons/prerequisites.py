"""Run (or reuse) the stages a lesson builds on, so every lesson also runs on its own.

    from prerequisites import ensure
    ensure("tiny", "out", upto="reward")   # world -> pretrain -> sft -> pairs -> reward, each reused if done
    ranked_pairs("tiny", "out")            # lessons 04 and 05: ranked pairs of the SFT model's own samples
    compare_over_seeds([("SFT", "out/tiny/sft/model.pt"), ...], "out/tiny")   # held-out gold, three seeds

Each stage is the library's own `run(cfg)` with its defaults, exactly what `minirlhf pipeline` runs, so
a stage that the pipeline (or an earlier lesson) already ran is reused in a fraction of a second.
Deliberate simplifications: the order is fixed; stages after `upto` are never run here.
"""

import os

from minirlhf.config import PairsConfig, PretrainConfig, RewardConfig, SFTConfig, WorldConfig, make_config

ORDER = ("world", "pretrain", "sft", "pairs", "reward")


def ensure(preset: str, out_dir: str, upto: str) -> None:
    from minirlhf.pairs import run as pairs
    from minirlhf.pretrain import run as pretrain
    from minirlhf.reward import run as reward
    from minirlhf.sft import run as sft
    from minirlhf.world.build import run as world

    if upto not in ORDER:
        raise ValueError(f"upto={upto!r}: expected one of {', '.join(ORDER)}")
    steps = {"world": (world, WorldConfig, {}), "pretrain": (pretrain, PretrainConfig, {}),
             "sft": (sft, SFTConfig, {"truncate": True}), "pairs": (pairs, PairsConfig, {}),
             "reward": (reward, RewardConfig, {"truncate": True})}
    for name in ORDER[:ORDER.index(upto) + 1]:
        fn, cls, extra = steps[name]
        fn(make_config(cls, overrides={"preset": preset, "out_dir": out_dir, **extra}))


def ranked_pairs(preset: str, out_dir: str) -> dict:
    """The pairs of lesson 04's and 05's last step, made once and shared (out/<preset>/pairs_ranked/).

    On every RL prompt, 8 samples of the SFT model ranked by one annotator, the best against the worst
    (`--pairing=best_worst`), no templated pairs: `minirlhf pairs --n_prompts=<all> --samples_per_prompt=8
    --pairing=best_worst --mix_templated=false --run_name=pairs_ranked`. Returns the stage's summary.
    """
    from minirlhf.pairs import run as pairs

    with open(os.path.join(out_dir, preset, "world", "rl_prompts.jsonl")) as f:
        n_rl = sum(1 for _ in f)
    return pairs(make_config(PairsConfig, overrides={
        "preset": preset, "out_dir": out_dir, "n_prompts": n_rl, "samples_per_prompt": 8, "pairing": "best_worst",
        "mix_templated": False, "run_name": "pairs_ranked"}))


def compare_over_seeds(models: list[tuple[str, str]], base: str, seeds=(1, 2, 3)) -> dict:
    """Held-out gold of each (name, model.pt) under several sampling seeds, KL against the SFT model.

    One seed moves a model's held-out gold by a few hundredths (tiny: about 0.04), as much as many of
    the differences a lesson compares, so each model is evaluated once per seed (what `minirlhf eval
    --seeds=1,2,3` does). Prints gold per seed, its mean and std, the mean KL and length; returns
    {name: mean gold}.
    """
    from minirlhf.checkpoint import load_model
    from minirlhf.evaluate import evaluate_policy, mean_and_std
    from minirlhf.sample import tokenizer_for

    sft_path = os.path.join(base, "sft", "model.pt")
    tok, reference = tokenizer_for(sft_path), load_model(sft_path)[0]
    print(f"\n{'policy':<26}" + "".join(f"{f'gold, seed {s}':>15}" for s in seeds)
          + f"{'mean':>8}{'std':>7}{'KL (k1)':>9}{'length':>8}")
    means = {}
    for name, path in models:
        policy = load_model(path)[0]
        runs = [evaluate_policy(policy, tok, os.path.join(base, "world"), reference=reference, seed=s)[0]
                for s in seeds]
        mean, std = mean_and_std(runs)
        means[name] = mean["gold"]
        print(f"{name:<26}" + "".join(f"{r['gold']:>+15.3f}" for r in runs)
              + f"{mean['gold']:>+8.3f}{std['gold']:>7.3f}{mean['kl_k1']:>9.3f}{mean['length']:>8.1f}")
    return means
