"""Small helpers every training stage shares: device and precision, the LR schedule, the NaN guard,
metrics logging, and the "reuse the artifact if its config, inputs and code are unchanged" check.

Deliberate simplifications: no trainer class. A stage is a plain function that calls these helpers in
the order a reader expects (build, loop, log, checkpoint).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch


# ----------------------------------------------------------------------------------------------------
# device and precision


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" = cuda if available, else cpu. Under torchrun, "cuda" means this process's GPU (LOCAL_RANK)."""
    from minirlhf import distributed as dist

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device={name}: CUDA is not available on this machine; use --device=cpu")
    if device.type == "cuda" and device.index is None and dist.is_distributed():
        device = torch.device("cuda", dist.local_rank())
    return device


def autocast(device: torch.device, dtype: str = "auto"):
    """bf16 autocast on CUDA (the default there), nothing on CPU unless asked (`dtype=bfloat16`)."""
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if dtype not in ("auto", "bfloat16"):
        raise ValueError(f"--dtype={dtype!r}: expected auto, float32 or bfloat16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def setup_torch(device: torch.device) -> None:
    """TF32 matmuls on CUDA (a free speed-up for fp32 parts); nothing changes on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_adamw(param_groups, lr: float, betas, device: torch.device):
    """AdamW, fused on CUDA (one kernel for all parameters)."""
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=device.type == "cuda")


# ----------------------------------------------------------------------------------------------------
# schedule


def lr_at(step: int, max_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up for `warmup_steps`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------------
# the NaN guard


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf: the message names the stage, the step and the term."""


def check_finite(history: dict[str, list], stage: str, first_step: int, last_good: str = "") -> None:
    """Check the loss terms logged since the last check (one host sync for the whole interval).

    history: term name -> list of scalar tensors, one per step, starting at step `first_step`.
    """
    for term, values in history.items():
        if not values:
            continue
        stacked = torch.stack([v.detach().float() for v in values])  # (steps,)
        bad = ~torch.isfinite(stacked)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            where = f"; the last good checkpoint is {last_good}" if last_good else ""
            raise NonFiniteLossError(f"{stage}: {term} is {stacked[i].item()} at step {first_step + i}"
                                     f" -- stopping{where}")


# ----------------------------------------------------------------------------------------------------
# logging and artifacts


def rows_up_to(path: str, last: int, key: str = "step") -> tuple[list[dict], int]:
    """The rows of a JSONL log whose `key` ("step", or "iteration" for PPO and GRPO) is at most `last`,
    and how many later rows there were ([] and 0 when the file does not exist).

    What a resumed run keeps: a run stopped between two checkpoints logged rows past its last one, and
    the resumed run logs those steps again."""
    if not os.path.exists(path):
        return [], 0
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in rows if r[key] <= last]
    return kept, len(rows) - len(kept)


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl.

    resume_step: None starts a new log (an existing file is removed); a step (resuming from the checkpoint
    written at that step) keeps the rows up to it and removes the later ones, which a crashed run logged
    after its last checkpoint and the resumed run logs again; `dropped` counts them. `key` names the
    rows' step field ("iteration" for PPO and GRPO).
    """

    def __init__(self, path: str, resume_step: int | None = None, enabled: bool = True, key: str = "step"):
        self.path, self.enabled, self.dropped = path, enabled, 0
        if not enabled or not os.path.exists(path):
            return
        if resume_step is None:
            os.remove(path)
            return
        kept, self.dropped = rows_up_to(path, resume_step, key)
        if self.dropped:
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(path + ".tmp", path)

    def log(self, row: dict) -> None:
        """Append `row` to the log as one JSON line (nothing when the log is disabled)."""
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON with sorted keys, atomically (`<path>.tmp`, then renamed over `path`)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    """The JSON value stored in the file `path`."""
    with open(path) as f:
        return json.load(f)


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (first 16 hex digits): the identity of an input artifact."""
    if os.path.isdir(path):  # a folder given for a file, e.g. --init=out/tiny/pretrain
        raise IsADirectoryError(f"{path} is a folder where a file was expected (e.g. {os.path.join(path, 'model.pt')})")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


PACKAGE = "minirlhf"


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of module `name` ("minirlhf.world.build") under the package folder `root`, if it has one."""
    parts = name.split(".")[1:]
    if parts and root.joinpath(*parts).with_suffix(".py").is_file():
        return root.joinpath(*parts).with_suffix(".py")
    init = root.joinpath(*parts, "__init__.py")
    return init if init.is_file() else None  # None: a name imported from a module, not a module


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) and \
                isinstance(node.body[0].value.value, str):
            node.body = node.body[1:]
    return tree


def code_digest(module: str, root: str | None = None) -> str:
    """A digest of the code a stage runs, for its reuse key: the module `module` and every module of the package
    it imports, directly or through another one (every import statement counts, those inside functions too).

    Each file counts as its syntax tree without docstrings, so an edited comment or docstring keeps a finished run
    reusable, while any change to what the code does (a loss, a default, the sampler) trains the stage again
    instead of reusing what the old code made. `root` is the package folder (default: this package's)."""
    root_path = Path(root) if root else Path(__file__).resolve().parent
    todo, seen, trees = [module], set(), {}  # modules to read, read, name -> digest of its code
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root_path, name)
        if path is None:
            if name == module:
                raise ValueError(f"code_digest: no module {module!r} under {root_path}")
            continue
        trees[name], imported = _code_and_imports(path.read_text(encoding="utf-8"), str(path))
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + imported  # its packages' __init__ run first
    blob = json.dumps(sorted(trees.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _code_and_imports(source: str, filename: str) -> tuple[str, list[str]]:
    """A digest of one file's syntax tree without docstrings, and the package's modules it imports (remembered by
    source text: each stage reads the files again, but parses only what changed)."""
    tree = ast.parse(source, filename=filename)
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            imported += [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # a name may be a module
    return hashlib.sha256(ast.dump(_without_docstrings(tree)).encode()).hexdigest(), imported


# flags that do not change a stage's result (a run cut short by --max_minutes is marked stopped_early instead)
RESULT_NEUTRAL = ("force", "resume", "progress", "stop_after", "out_dir", "log_interval", "max_minutes")


def config_key(cfg, inputs: dict[str, str], module: str, ignore=RESULT_NEUTRAL) -> str:
    """A digest of the config (minus flags that do not change the result), the inputs' digests and the code of the
    stage's `module` (`code_digest`: the code the stage runs, without comments and docstrings).

    `out_dir` is left out: where the artifacts live does not change them (the inputs are digested by
    content), so a moved or copied out/ folder is still reused. `device` and `dtype` count as what they resolve
    to, not as written: without CUDA, "auto", "cpu" and "float32" are one setting and reuse one another's runs."""
    d = {k: v for k, v in vars(cfg).items() if k not in ignore}
    if "device" in d:
        device = resolve_device(d["device"])
        d["device"] = device.type  # (this process's GPU or another one: the same setting)
        if d.get("dtype") == "auto":  # `autocast`'s rule
            d["dtype"] = "bfloat16" if device.type == "cuda" else "float32"
    blob = json.dumps({"config": d, "inputs": inputs, "code": code_digest(module)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_record(cfg, inputs: dict[str, str] | None) -> dict:
    """What a checkpoint records about the run that wrote it: its settings (minus the flags that do not change
    the result) and its inputs' digests (None: not known)."""
    return {"config": {k: v for k, v in vars(cfg).items() if k not in RESULT_NEUTRAL}, "inputs": inputs}


def check_resume(ckpt_path: str, recorded: dict | None, cfg, inputs: dict[str, str] | None) -> None:
    """--resume continues the run that wrote `ckpt_path`, never another one: a ValueError naming every setting
    that differs from the checkpoint's (`recorded`, from `run_record`), or saying that the inputs changed.
    A checkpoint that recorded nothing (written before runs were recorded) is taken as it is."""
    if not recorded:
        return
    now = run_record(cfg, inputs)
    before = recorded["config"]
    changed = [f"--{k}={before.get(k)!r} then, {now['config'].get(k)!r} now"
               for k in sorted(set(before) | set(now["config"])) if before.get(k) != now["config"].get(k)]
    if changed:
        raise ValueError(f"--resume: {ckpt_path} was written with other settings ({'; '.join(changed)}); resume with "
                         "the settings it was started with, or run without --resume to start over")
    if inputs is not None and recorded.get("inputs") is not None and recorded["inputs"] != inputs:
        names = sorted(k for k in set(inputs) | set(recorded["inputs"]) if inputs.get(k) != recorded["inputs"].get(k))
        raise ValueError(f"--resume: {ckpt_path} was written from other inputs ({', '.join(names)} changed since); "
                         "run without --resume to start over")


def reusable(stage_dir: str, key: str, force: bool, artifacts: tuple[str, ...] = ("model.pt", "metrics.jsonl"),
             resume: bool = False) -> dict | None:
    """The stage's summary if its artifacts were made from the same key (and not --force or --resume, and the
    run was not cut short by --max_minutes), else None: the caller is about to (re)build the stage. Every file in
    `artifacts` must still be there (a training stage's model and the metrics its plots are drawn from).

    Nothing is removed here: the stage first reads and checks every input, and only then calls
    `begin_writing`, which removes the old summary. A run refused for bad data or a bad option leaves the
    folder as it was."""
    if resume:
        return None
    path = os.path.join(stage_dir, "summary.json")
    summary = None
    if not force and os.path.exists(path) and all(os.path.exists(os.path.join(stage_dir, a)) for a in artifacts):
        with contextlib.suppress(FileNotFoundError):  # rank 0 may be removing it (`begin_writing`)
            summary = read_json(path)
    if summary is not None and summary.get("key") == key and not summary.get("stopped_early"):
        return summary  # (a run cut short by --max_minutes is kept, but not reused as finished)
    return None


def begin_writing(stage_dir: str, cfg, tokenizer_from: str | None = None) -> None:
    """Called by a stage once it has read and checked every input, just before it writes a new run into
    `stage_dir` (rank 0 alone writes; the other ranks return at once).

    Removes the old summary.json first, so that a run stopped half-way (a new model.pt written, its summary
    not yet) leaves no summary a later run of the old config could take for its own; then copies in the
    tokenizer.json that sits next to the checkpoint `tokenizer_from` and writes config.json. With --resume
    nothing already there is touched: the summary, config.json and tokenizer.json are the resumed run's own
    (`check_resume` requires its settings and inputs), and a refused resume must lose nothing."""
    from minirlhf import distributed as dist
    from minirlhf.config import save_config

    if not dist.is_main():
        return
    resume = getattr(cfg, "resume", False)
    summary = os.path.join(stage_dir, "summary.json")
    if not resume and os.path.exists(summary):
        os.remove(summary)
    tokenizer, config = os.path.join(stage_dir, "tokenizer.json"), os.path.join(stage_dir, "config.json")
    source = tokenizer_file(tokenizer_from) if tokenizer_from else None
    if source and os.path.abspath(source) != os.path.abspath(tokenizer) and not (resume and os.path.exists(tokenizer)):
        shutil.copyfile(source, tokenizer)  # (an --init inside the stage's own folder has it already)
    if not (resume and os.path.exists(config)):
        save_config(cfg, config)


def tokenizer_file(checkpoint: str) -> str:
    """The tokenizer.json next to a checkpoint (every stage folder holds its model's tokenizer)."""
    return os.path.join(os.path.dirname(checkpoint), "tokenizer.json")


def same_tokenizer(a: str, b: str) -> bool:
    """Whether the checkpoints `a` and `b` read token ids alike: identical tokenizer.json files next to them."""
    ta, tb = tokenizer_file(a), tokenizer_file(b)
    return os.path.exists(ta) and os.path.exists(tb) and file_digest(ta) == file_digest(tb)


def check_same_tokenizer(policy: str, other: str, flag: str) -> None:
    """ValueError unless the model `other` (a reward, value or reference model, given by option `flag`) reads
    token ids as the policy `policy` does (`same_tokenizer`). Another tokenizer's ids would be scored without any
    error, and every number would be meaningless."""
    mine, theirs = tokenizer_file(policy), tokenizer_file(other)
    for path, what in ((mine, policy), (theirs, other)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: every checkpoint needs its tokenizer next to it ({what})")
    if not same_tokenizer(policy, other):
        raise ValueError(f"{flag}={other}: its tokenizer ({theirs}) is not the one of {policy} ({mine}); the two "
                         "models would read the same token ids as different text")


class Stopwatch:
    """Wall-clock time (`time.perf_counter`) since the stopwatch was created."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the stopwatch started."""
        return time.perf_counter() - self.t0
