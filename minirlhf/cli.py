"""The `minirlhf` command: one subcommand per stage, each a thin shell around that stage's `run(cfg)`.

    minirlhf pipeline                      # everything, preset chosen by the device (tiny on CPU)
    minirlhf world --preset tiny           # one stage
    minirlhf pretrain --preset tiny --max_steps=500
    minirlhf sample --checkpoint out/tiny/pretrain/model.pt --prompt "The capital of France is"
    minirlhf pretrain --help               # every option with its type, default and meaning
    minirlhf import-hf path/to/gpt2 --out=out/hf/gpt2    # positional arguments where a command names them

Options are `--key=value` (or `--key value`), checked against the stage's config dataclass: an unknown key,
a value of the wrong type or out of range, or an option given twice is one line of error that says what is
valid, never a traceback.

Under torchrun (`torchrun --nproc_per_node=N -m minirlhf <command> ...`) the command joins the process
group first (distributed.init). The training stages and the pipeline run data-parallel on every process.
The other commands (eval, sample, best-of-n, frontier, ...) run on rank 0 alone, as a one-process job; the
other processes, once in the process group, return at once with status 0, write nothing and join no
collective (so a command that runs longer than the collective timeout, MINIRLHF_DIST_TIMEOUT, does not
fail). torchrun waits for every process: the job ends when rank 0's command does, with its exit status.
An error on any rank is printed with that rank ("error on rank 1 of 2: ...") and ends that process at
once, which ends the job (see distributed.py).

Deliberate simplifications: no argparse subparsers; the help text is read from the comments on the
config fields, so the dataclass is the single place where an option is documented.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import traceback

from minirlhf import config as C
from minirlhf import distributed as dist

# command -> (config class, "module:function", one-line description)
COMMANDS = {
    "pipeline": (C.PipelineConfig, "minirlhf.pipeline:run", "run every stage, then write the report and plots"),
    "world": (C.WorldConfig, "minirlhf.world.build:run", "build the synthetic TinyWorld data sets"),
    "pretrain": (C.PretrainConfig, "minirlhf.pretrain:run", "train the tokenizer and the base GPT"),
    "sft": (C.SFTConfig, "minirlhf.sft:run", "supervised fine-tuning on demonstrations"),
    "pairs": (C.PairsConfig, "minirlhf.pairs:run", "sample on-policy preference pairs from the SFT model"),
    "reward": (C.RewardConfig, "minirlhf.reward:run", "train the reward model on preference pairs"),
    "ppo": (C.PPOConfig, "minirlhf.ppo:run", "PPO against the reward model (value head, GAE, KL control)"),
    "dpo": (C.DPOConfig, "minirlhf.dpo:run", "DPO / cDPO / IPO / KTO / SimPO / ORPO on preference data"),
    "grpo": (C.GRPOConfig, "minirlhf.grpo:run", "GRPO: group-relative advantages, no value model (RM or gold reward)"),
    "best-of-n": (C.BestOfNConfig, "minirlhf.best_of_n:run", "best-of-n sampling from SFT, chosen by the RM"),
    "frontier": (C.FrontierConfig, "minirlhf.frontier:run", "gold reward vs KL for PPO, DPO, GRPO and best-of-n"),
    "eval": (C.EvalConfig, "minirlhf.evaluate:run", "evaluate a chat policy against the world's gold judge"),
    "sample": (C.SampleConfig, "minirlhf.sample:run", "print continuations of a prompt from a checkpoint"),
    "import-hf": (C.ImportHFConfig, "minirlhf.hf:run_import", "a Hugging Face GPT-2 folder -> our model.pt (PATH [--out=DIR])"),
    "export-hf": (C.ExportHFConfig, "minirlhf.hf:run_export", "our model.pt -> a Hugging Face folder (CHECKPOINT OUT)"),
}
# commands that run data-parallel under torchrun (every process trains); the others run on rank 0 only
DATA_PARALLEL = {"pipeline", "pretrain", "sft", "reward", "ppo", "dpo", "grpo"}
# commands that take positional arguments: command -> the config fields they fill, in order
POSITIONAL = {"import-hf": ("path",), "export-hf": ("checkpoint", "out")}


def field_help(cls) -> list[str]:
    """Lines `--name (type, default): comment` read from the dataclass source (a comment continued on the next
    lines, `#` alone before the text, is joined)."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):  # base classes first, so a subclass's comment wins
        name = None
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)", line)
            more = re.match(r"\s+#\s*(.*)", line)
            if m:
                name, comments[m.group(1)] = m.group(1), m.group(2)
            elif more and name:
                comments[name] += " " + more.group(1)
            else:
                name = None
    lines = []
    for f in dataclasses.fields(cls):
        typ = f.type if isinstance(f.type, str) else f.type.__name__
        lines.append(f"  --{f.name:<16} ({typ}, default {f.default!r}) {comments.get(f.name, '')}")
    for alias, target in getattr(cls, "aliases", {}).items():
        lines.append(f"  --{alias.replace('_', '-'):<16} the same as --{target}")
    return lines


def usage() -> str:
    """The top-level help text: the usage line, then one line per command with its description."""
    lines = ["usage: minirlhf <command> [--key=value ...]   (minirlhf <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "\n".join(lines)


def normalise_args(args: list[str]) -> list[str]:
    """Accept `--key value` as well as `--key=value`."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{a}={args[i + 1]}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def positional_args(name: str, args: list[str]) -> list[str]:
    """`minirlhf export-hf A B` -> ["--checkpoint=A", "--out=B"]; options pass through unchanged. A field given
    both ways (`export-hf A B --out=C`) is a ConfigError."""
    names = POSITIONAL.get(name, ())
    options = [a for a in args if a.startswith("--")]
    values = [a for a in args if not a.startswith("--")]
    if len(values) > len(names):
        expected = " ".join(n.upper() for n in names) or "no positional arguments"
        raise C.ConfigError(f"unexpected argument {values[len(names)]!r} (expected {expected}; "
                            "options look like --key=value)")
    for field, value in zip(names, values):
        for option in options:
            if option[2:].partition("=")[0].replace("-", "_") == field:
                raise C.ConfigError(f"--{field} given twice (as {field.upper()} {value!r} and as {option}); "
                                    "give it once")
    return options + [f"--{n}={v}" for n, v in zip(names, values)]


def main(argv: list[str] | None = None) -> int:
    """Run one `minirlhf` command line (`argv`, default sys.argv[1:]) -> its exit status.

    0 after the command, or after printing help (no arguments, -h/--help/help, `help <command>` or `<command> --help`);
    2 for an unknown command or a bad option (one line on stderr, before anything runs; a --gold_judge is loaded here
    to check it); 1 when the stage raises ValueError, FileNotFoundError or RuntimeError (printed without a
    traceback); 130 on Ctrl-C (saying how to continue where a command can: --resume, or the pipeline run again).
    Under torchrun it first joins the process group: a data-parallel command runs on every rank, any other on rank 0
    alone (the other ranks return 0 at once), and a failing rank ends its process there (`distributed.abort`)
    instead of returning. Any other exception propagates in one process.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["help"] and len(argv) > 1:  # `minirlhf help sample` is `minirlhf sample --help`
        argv = [argv[1], "--help"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"minirlhf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    cls, target, desc = COMMANDS[name]
    if "-h" in args or "--help" in args:
        usage_line = " ".join(["minirlhf", name, *(n.upper() for n in POSITIONAL.get(name, ())), "[--key=value ...]"])
        print(f"minirlhf {name}: {desc}\nusage: {usage_line}\n\noptions:")
        print("\n".join(field_help(cls)))
        return 0
    try:
        cfg = C.make_config(cls, overrides=positional_args(name, normalise_args(args)))
        if getattr(cfg, "preset", None) == "" and cls is C.PipelineConfig:
            cfg.preset = C.default_preset()
        if getattr(cfg, "gold_judge", ""):  # check a --gold-judge before any training, not after it
            from minirlhf.evaluate import load_judge

            load_judge(cfg.gold_judge)
    except (C.ConfigError, ValueError) as e:
        print(f"minirlhf {name}: {e}", file=sys.stderr)
        return 2
    module, func = target.split(":")
    run = getattr(importlib.import_module(module), func)
    try:
        dist.init()  # under torchrun: join the process group (one process: nothing happens)
        if name in DATA_PARALLEL:
            run(cfg)
            dist.barrier()
        elif dist.is_main():
            with dist.solo():  # not data-parallel: rank 0 runs it as a one-process job
                run(cfg)
        # else: not data-parallel, and not rank 0: return now. Waiting for rank 0 in a collective would
        # fail after MINIRLHF_DIST_TIMEOUT seconds, and end the whole job, if its command runs longer.
    except (ValueError, OSError, RuntimeError) as e:
        # Errors we raise on bad input already say where and what, and so does an OSError (a missing file,
        # a folder given for a file, no permission): print them without a traceback.
        print(f"minirlhf {name}: error{dist.where()}: {e}{dist.collective_error_hint(e)}", file=sys.stderr)
        dist.abort(1)  # distributed: end this process now, which ends the job (no hang in a collective)
        return 1
    except KeyboardInterrupt:
        if hasattr(cfg, "resume"):
            hint = "; the last checkpoint is kept (continue with --resume)"
        elif cls is C.PipelineConfig:
            hint = "; run the same command again to continue (finished stages are reused)"
        else:
            hint = ""  # nothing to continue from: sample, eval, pairs, best-of-n, ... start over
        print(f"\nminirlhf {name}: interrupted{hint}", file=sys.stderr)
        dist.abort(130)
        return 130
    except BaseException:
        if not dist.is_distributed():
            raise
        traceback.print_exc()
        print(f"minirlhf {name}: crashed{dist.where()} (traceback above)", file=sys.stderr)
        dist.abort(1)
    return 0  # under torchrun the entry point (`entry`) destroys the process group when the process ends


def entry() -> None:
    """The `minirlhf` console script and `python -m minirlhf`: run `main`, then end the process
    (`distributed.finish`: under torchrun, destroy the process group and skip the interpreter's teardown)."""
    dist.finish(main())


if __name__ == "__main__":
    entry()
