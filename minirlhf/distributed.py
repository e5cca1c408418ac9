"""Data parallelism across processes: torchrun's environment, DDP, and the few collectives the stages need.

Run any stage, or the whole pipeline, on N processes (N GPUs, or N CPU processes):
    torchrun --nproc_per_node=2 -m minirlhf pipeline --preset micro
    torchrun --nproc_per_node=4 -m minirlhf sft --preset small
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 -m minirlhf ppo

A stage's code is the same for one process and for N; this module is what makes that true:
  * `init()` reads RANK, WORLD_SIZE and LOCAL_RANK (torchrun sets them) and, only when WORLD_SIZE > 1, joins
    the process group: gloo on CPU; on CUDA "cpu:gloo,cuda:nccl" (NCCL for CUDA tensors, gloo for the small
    CPU ones) with process i on GPU LOCAL_RANK. Any collective that waits longer than
    MINIRLHF_DIST_TIMEOUT seconds (default 1800) fails instead of hanging. `minirlhf`'s command line calls
    it; in one process (no torchrun) it does nothing, and every helper below is then a no-op.
  * `data_parallel(model)` wraps a model in DistributedDataParallel when there is more than one process.
  * `rank_slices(batch_size, grad_accum)`: every optimiser step trains on the same GLOBAL batch of
    `batch_size` examples whatever the number of processes; rank r takes the r-th contiguous 1/N of it and
    cuts that into micro-batches (gradient accumulation inside the rank makes up the difference).
  * `all_reduce_sum`, `all_reduce_mean`, `all_reduce_max` (tensors or floats), `all_gather_rows`,
    `share(obj)` (rank 0's object on every rank), `barrier()`, `on_main(fn)` (rank 0 runs fn, the others
    wait for its result; inside it rank 0 runs `solo()`, as a world of one): the global statistics and the
    "rank 0 alone writes artifacts" rule.
  * Failures: `minirlhf`'s command line prints an error with the rank that raised it ("error on rank 1 of
    2: ...") and ends that process at once with `os._exit(1)` -- no exit handlers, no attempt at a clean
    `destroy_process_group` while the peers may be blocked in a collective. The peers' next collective
    then fails (gloo sees the closed connection) and torchrun stops the job with the failing rank's exit
    code; the timeout is the backstop for a rank that hangs rather than fails. A command that ends normally
    goes through `finish(code)`: it destroys the process group (`shutdown()`) and leaves with `os._exit`,
    skipping the interpreter's teardown, where the C++ side of the process group can abort a process whose
    work is done and turn a good run into a failed job ("terminate called without an active exception",
    after every artifact was written: once in CI and once in about 80 two-process pipeline runs here).
    (`shutdown()` is also registered at exit, for code that calls stages in-process.)

The evaluation harness (`evaluate.evaluate_policy`: sampling and judging hundreds of prompts) is shared:
rank r takes every N-th batch of prompts and the samples are all-gathered, so every rank reports the
numbers one process would. The validation losses during training, the reward model's calibration and
artifact writing happen on rank 0 while the others wait (see the README, "More than one GPU").

Deliberate simplifications: data parallelism only (no tensor or pipeline parallelism, no FSDP); the
global batch must divide evenly between the processes.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

TIMEOUT_ENV = "MINIRLHF_DIST_TIMEOUT"  # seconds a collective may wait before it fails
DEFAULT_TIMEOUT = 1800.0


# ----------------------------------------------------------------------------------------------------
# who am I


_solo_depth = 0  # > 0 inside `solo()`


def is_distributed() -> bool:
    """True when this process is one of several (the process group is initialised with world size > 1)
    and it is not inside a `solo()` block."""
    return _solo_depth == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def solo():
    """Inside this block the process acts alone: rank 0 of 1, every helper here a no-op.

    For work that rank 0 does by itself while the others wait (a command that is not data-parallel, the
    world build, `on_main`): stage code called from it -- which may call `share`, `barrier` or
    `data_parallel` -- then runs exactly as in one process instead of waiting for ranks that never come.
    """
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def world_size() -> int:
    """The number of processes in the job: 1 in one process and inside `solo()`."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the job (0 to world_size - 1): 0 in one process and inside `solo()`."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's index on its machine (its GPU), from torchrun's LOCAL_RANK."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, evaluates and writes artifacts."""
    return rank() == 0


def where() -> str:
    """' on rank 1 of 2' when distributed, '' in one process: for error messages."""
    return f" on rank {rank()} of {world_size()}" if is_distributed() else ""


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------
# start and stop


def timeout_seconds() -> float:
    """Seconds a collective may wait before it fails: MINIRLHF_DIST_TIMEOUT, or 1800 when it is unset or empty.

    A ValueError naming the variable when it is not a positive number of at most 1e9 (about 31 years; 'inf'
    would otherwise reach datetime.timedelta as an OverflowError).
    """
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1e9:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds (at most 1e9)")
    return value


def init() -> None:
    """Join torchrun's process group when WORLD_SIZE > 1 (idempotent; nothing in one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
                           f"`torchrun --nproc_per_node={world} -m minirlhf ...`")
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    atexit.register(shutdown)


def shutdown() -> None:
    """Destroy the process group after a normal end (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish(code: int) -> NoReturn:
    """End this process with exit status `code` after a command returned it (the `minirlhf` entry point).

    One process: `sys.exit(code)`. Under torchrun: destroy the process group, flush the output, then
    `os._exit(code)` -- every file a stage writes is closed by then (each is written with `with open`),
    and skipping the interpreter's teardown avoids the abort described in the module docstring."""
    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    try:
        shutdown()
    finally:
        _flush_output()
        os._exit(code)


def _flush_output() -> None:
    """Flush stdout and stderr before os._exit (which would drop what is still buffered); a closed pipe is
    not an error here."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def collective_error_hint(e: BaseException) -> str:
    """A hint to append to the error a collective raises when a peer process is gone or late, else "".

    (A hint only: gloo's errors reach Python as DistError, RuntimeError or even FileNotFoundError, so
    the text decides.)"""
    text = str(e)
    if not is_distributed() or not (isinstance(e, getattr(dist, "DistError", ())) or
                                    any(s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset"))):
        return ""
    return (f" (a collective failed: another process ended, or did not join it within {timeout_seconds():g} s "
            f"({TIMEOUT_ENV}); look for that process's own error)")


def abort(exit_code: int = 1) -> None:
    """In a distributed run: flush and end this process now (see the module docstring). No-op otherwise."""
    if is_distributed():
        _flush_output()
        os._exit(exit_code)


# ----------------------------------------------------------------------------------------------------
# the model


def data_parallel(model):
    """DistributedDataParallel(model) when there are several processes, `model` itself otherwise.

    No buffer sync in forward: our buffers (the reward head's gain and offset, attention masks) do not
    change during training, and DDP already copies rank 0's parameters and buffers to every rank when it
    wraps the model. It also means a forward pass under `torch.no_grad()` does no communication.
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    # newer PyTorch names the switch forward_sync_buffers (buffers are still copied from rank 0 at wrap time)
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_buffer_sync)


def unwrap(model):
    """The module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def no_sync(model):
    """DDP's no_sync() (accumulate gradients locally, no all-reduce) if `model` is DDP-wrapped, else nothing."""
    from torch.nn.parallel import DistributedDataParallel

    m = getattr(model, "_orig_mod", model)
    return m.no_sync() if isinstance(m, DistributedDataParallel) else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------
# the data


def rank_slices(batch_size: int, grad_accum: int) -> list[slice]:
    """This rank's micro-batches as slices of the global batch's rows [0, batch_size).

    Rank r owns rows [r * batch_size / N, (r + 1) * batch_size / N) and cuts them into
    ceil(grad_accum / N) micro-batches as even as possible (so no micro-batch is larger than the
    batch_size / grad_accum the user asked for). One process: `grad_accum` equal micro-batches.
    """
    world, r = world_size(), rank()
    if grad_accum < 1 or batch_size % grad_accum:
        raise ValueError(f"--batch_size={batch_size} must be divisible by --grad_accum={grad_accum}")
    if batch_size % world:
        raise ValueError(f"--batch_size={batch_size} must be divisible by the number of processes ({world}): "
                         "every optimiser step trains on the same global batch, split evenly between them")
    per_rank = batch_size // world
    n_micro = min(per_rank, -(-grad_accum // world))  # ceil(grad_accum / world)
    bounds = [r * per_rank + per_rank * j // n_micro for j in range(n_micro + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n items (n divisible by the world size)."""
    world, r = world_size(), rank()
    if n % world:
        raise ValueError(f"{n} items cannot be split evenly between {world} processes")
    return r * n // world, (r + 1) * n // world


# ----------------------------------------------------------------------------------------------------
# collectives (each one a no-op in one process)


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone(), True
    return torch.tensor(float(x), dtype=torch.float64), False


def _reduce(x, op):
    if not is_distributed():
        return x
    t, was_tensor = _as_tensor(x)
    dist.all_reduce(t, op=op)
    return t if was_tensor else t.item()


def all_reduce_sum(x):
    """Sum of a tensor (a new tensor) or a float over every rank."""
    return _reduce(x, dist.ReduceOp.SUM)


def all_reduce_mean(x):
    """Mean of a tensor (a new tensor) or a float over every rank."""
    if not is_distributed():
        return x
    return all_reduce_sum(x) / world_size()


def all_reduce_max(x):
    """Maximum of a tensor (a new tensor) or a float over every rank."""
    return _reduce(x, dist.ReduceOp.MAX)


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (so that all ranks take the same branch)."""
    return bool(all_reduce_max(1.0 if flag else 0.0)) if is_distributed() else flag


def sum_parts(stats: dict[str, list]) -> dict[str, list]:
    """Per-minibatch numbers, each this rank's weighted part of the minibatch's mean -> the minibatch means.

    stats: name -> [0-d tensor per minibatch]; every rank must hold the same names and counts. The parts
    are summed over the ranks in one all-reduce (the identity in one process, where the part is the whole).
    """
    names = sorted(stats)
    table = all_reduce_sum(torch.stack([torch.stack(stats[k]).float() for k in names]))  # (names, minibatches)
    return {k: list(table[i]) for i, k in enumerate(names)}


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order (the shapes must be equal)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def share(obj=None):
    """Rank 0's `obj` (any picklable object) on every rank; the others pass anything (None)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process reaches this call (a no-op in one process and inside `solo()`)."""
    if is_distributed():
        dist.barrier()


def on_main(fn, *args, **kwargs):
    """Rank 0 runs fn(*args, **kwargs) on its own (`solo`); the other ranks wait and receive its return value."""
    result = None
    if is_main():
        with solo():
            result = fn(*args, **kwargs)
    return share(result)
