"""Checkpoints: atomic writes, `weights_only` loads, and the RNG states that make `--resume` exact.

    save_checkpoint(path, {"model": model.state_dict(), "step": 10, ...})
    state = load_checkpoint(path)               # torch.load(weights_only=True)
    model, ckpt = load_model("out/tiny/pretrain/model.pt")  # the GPT and the whole checkpoint dict

A checkpoint is written to `<path>.tmp`, flushed to disk, then renamed over `<path>`: a process killed
mid-write leaves the previous file intact, never a half-written one. Everything stored is a tensor or a
plain Python value, so loading never needs to unpickle arbitrary objects.

Deliberate simplifications: one file per checkpoint (no sharding); no numpy RNG (the project draws its
random numbers from torch and from seeded `random.Random` objects only).
"""

from __future__ import annotations

import dataclasses
import os
import random

import torch

from minirlhf.config import ModelConfig


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` atomically (temp file, fsync, rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """`torch.load(path, weights_only=True)` onto `map_location` -> the checkpoint dict.

    FileNotFoundError when there is no file; a one-line RuntimeError naming the file and what was expected when
    torch cannot load it (a JSON or text file, a truncated file, objects that `weights_only` refuses) or it holds
    no dict. (torch's own message is kept as the cause: it advises weights_only=False, never right here.)
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    expected = ("the training state a stage writes for --resume" if os.path.basename(path) == "ckpt.pt"
                else "a stage's model.pt, e.g. out/tiny/sft/model.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path} is not a checkpoint written by minirlhf (expected {expected})") from e
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} is not a checkpoint written by minirlhf (expected {expected})")
    return state


def rng_state() -> dict:
    """The global RNG states that training consumes (torch CPU, this process's CUDA device if present,
    Python's `random`). One CUDA state, not one per visible GPU: a process trains on one device, and a
    run resumed where fewer GPUs are visible must still load it."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by `rng_state` (torch CPU, Python's `random`, CUDA).

    The CUDA state is restored only when CUDA is available here. A checkpoint holding one CUDA state per visible
    GPU gives this process's current device its entry (the last entry if there are fewer).
    """
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # a checkpoint written with one state per visible GPU
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def model_payload(model, stage: str, **extra) -> dict:
    """What `model.pt` holds: weights, the model config as a dict, the stage name, and `extra`."""
    module = getattr(model, "module", model)  # unwrap DDP / torch.compile
    module = getattr(module, "_orig_mod", module)
    return {"model": module.state_dict(), "model_config": dataclasses.asdict(module.config), "stage": stage,
            **extra}


def load_model(path: str, device="cpu", dropout: float = 0.0):
    """Load a GPT from a `model.pt` written by any stage -> (model, checkpoint dict).

    Dropout is set to `dropout` (0 by default: fine-tuning and every RL stage run without it).
    """
    from minirlhf.model import GPT

    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "model_config" not in ckpt:
        raise RuntimeError(f"{path} is not a minirlhf model checkpoint (keys: {sorted(ckpt)})")
    if any(k.startswith("head.") for k in ckpt["model"]):
        raise RuntimeError(f"{path} is a reward/value model (trunk + scalar head); pass a policy model.pt, "
                           "e.g. out/tiny/sft/model.pt")
    model = GPT(_model_config(path, ckpt, dropout))
    _load_weights(path, model, ckpt["model"])
    return model.to(device), ckpt


def _model_config(path: str, ckpt: dict, dropout: float) -> ModelConfig:
    """The checkpoint's ModelConfig, or a RuntimeError naming the file and the keys this version lacks."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(ckpt["model_config"]) - known)
    if unknown:
        raise RuntimeError(f"{path}: model_config has keys this version of minirlhf does not know: {unknown}")
    return ModelConfig(**{**ckpt["model_config"], "dropout": dropout})


def _load_weights(path: str, model, state: dict) -> None:
    """`model.load_state_dict(state)`, or a RuntimeError naming the file and the first mismatches."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3] if "\n" in str(e) else [str(e)]
        raise RuntimeError(f"{path}: the weights do not fit the model its config describes ("
                           + " ".join(line.strip() for line in first)[:300] + ")") from None


def load_scalar_model(path: str, device="cpu"):
    """Load a reward or value model (GPT trunk + ScalarHead) -> (model, checkpoint dict)."""
    from minirlhf.model import GPT, ScalarModel

    ckpt = load_checkpoint(path)
    if not any(k.startswith("head.") for k in ckpt.get("model", {})):
        raise RuntimeError(f"{path} is not a reward/value model checkpoint (it has no scalar head)")
    if "model_config" not in ckpt:  # e.g. a stage's ckpt.pt (training state) instead of its model.pt
        raise RuntimeError(f"{path} is not a minirlhf model checkpoint (keys: {sorted(ckpt)}); "
                           "pass the stage's model.pt")
    model = ScalarModel(GPT(_model_config(path, ckpt, 0.0)))
    _load_weights(path, model, ckpt["model"])
    return model.to(device), ckpt
