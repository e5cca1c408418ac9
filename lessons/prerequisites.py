"""Run (or reuse) the stages a lesson builds on, so every lesson also runs on its own.

    from prerequisites import ensure
    ensure("tiny", "out", upto="reward")   # world -> pretrain -> sft -> pairs -> reward, each reused if done

Each stage is the library's own `run(cfg)` with its defaults, exactly what `minirlhf pipeline` runs, so
a stage that the pipeline (or an earlier lesson) already ran is reused in a fraction of a second.
Deliberate simplifications: the order is fixed; stages after `upto` are never run here.
"""

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
