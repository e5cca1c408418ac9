"""What tests/test_distributed.py launches under torchrun: minirlhf commands, run in sequence by every process.

    torchrun --standalone --nproc_per_node=2 tests/dist_worker.py SPEC.json

SPEC.json: {"commands": [["sft", "--preset=micro", ...], ...], "watch": DIR, "report": DIR,
            "fail": null or {"rank": 1, "function": "minirlhf.sft:sft_loss", "after_calls": 2,
                             "hang": false}}

Each command goes through `minirlhf.cli.main`, exactly as `torchrun -m minirlhf <command>` would run it;
a command written ["@on_main", "dpo", ...] is run through `distributed.on_main` instead: by rank 0 alone,
as a one-process job, while the other ranks wait (what `minirlhf frontier` does with its PPO and DPO runs).
Every file this process opens for writing (or removes, renames, copies) under `watch` is recorded with
a Python audit hook and written to `report/writes_rank<r>.json` at the end, so the test can check that
rank 0 alone writes artifacts. `fail` replaces a function with one that raises (or, with "hang", sleeps
for an hour) on the given rank after that many calls: the injected failure of the "one rank fails" tests
(test code only, not in the library).
"""

import importlib
import json
import os
import sys
import time


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    rank = int(os.environ["RANK"])
    watch = os.path.realpath(spec["watch"])
    writes: list[str] = []

    def under_watch(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            os.path.realpath(os.fsdecode(path)).startswith(watch + os.sep)

    def audit(event, args):
        if event == "open" and under_watch(args[0]):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            if writing:
                writes.append(f"open {args[0]}")
        elif event in ("os.remove", "os.rename", "shutil.copyfile", "os.truncate") and under_watch(args[1 if event == "shutil.copyfile" else 0]):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(audit)

    fail = spec.get("fail")
    if fail and fail["rank"] == rank:
        module_name, name = fail["function"].split(":")
        module = importlib.import_module(module_name)
        original, calls = getattr(module, name), [0]

        def failing(*args, **kwargs):
            calls[0] += 1
            if calls[0] > fail["after_calls"]:
                if fail.get("hang"):
                    time.sleep(3600)
                raise RuntimeError(f"injected failure in {name} (call {calls[0]})")
            return original(*args, **kwargs)

        setattr(module, name, failing)

    from minirlhf import distributed as dist
    from minirlhf.cli import main as cli_main

    for argv in spec["commands"]:
        rc = dist.on_main(cli_main, argv[1:]) if argv[0] == "@on_main" else cli_main(argv)
        if rc:
            return rc
    os.makedirs(spec["report"], exist_ok=True)
    with open(os.path.join(spec["report"], f"writes_rank{rank}.json"), "w") as f:
        json.dump(writes, f)
    return 0


if __name__ == "__main__":
    from minirlhf import distributed

    distributed.finish(main())  # as the `minirlhf` entry point ends a torchrun worker
