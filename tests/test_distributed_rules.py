"""minirlhf/distributed.py in one process, rule by rule: the helpers on a rank of a pretend world (torch.distributed's
functions replaced by fakes whose other rank holds known numbers), so the arithmetic each collective promises is
checked by hand without launching processes (tests/test_distributed.py launches real ones, marked slow)."""

import pytest
import torch

from minirlhf import distributed as dist


class FakeWorld:
    """torch.distributed as rank `rank` of `size` sees it; every other rank holds `peer(x)` for this rank's x."""

    def __init__(self, monkeypatch, rank: int, size: int = 2, peer=lambda t: t + 1):
        self.rank, self.size, self.peer = rank, size, peer
        tdist = dist.dist
        for name, fn in [("is_available", lambda: True), ("is_initialized", lambda: True),
                         ("get_world_size", lambda: size), ("get_rank", lambda: rank),
                         ("all_reduce", self.all_reduce), ("all_gather", self.all_gather),
                         ("broadcast_object_list", self.broadcast_object_list)]:
            monkeypatch.setattr(tdist, name, fn)

    def all_reduce(self, t, op):
        others = [self.peer(t.clone()) for _ in range(self.size - 1)]
        if op == dist.dist.ReduceOp.SUM:
            t.add_(sum(others))
        else:
            assert op == dist.dist.ReduceOp.MAX, op
            t.copy_(torch.stack([t, *others]).amax(0))

    def all_gather(self, parts, x):
        for r in range(self.size):
            parts[r].copy_(x if r == self.rank else self.peer(x.clone()))

    def broadcast_object_list(self, box, src):
        if self.rank != src:
            box[0] = ("from rank", src)


def test_collectives_on_rank_1_of_2_combine_with_the_other_rank(monkeypatch):
    """Sum, mean, max, any, gather in rank order and share (rank 0's object), with the other rank holding x + 1;
    a tensor argument is left as it was (a new tensor comes back)."""
    FakeWorld(monkeypatch, rank=1)
    assert dist.is_distributed() and dist.world_size() == 2 and dist.rank() == 1 and not dist.is_main()
    assert dist.where() == " on rank 1 of 2"
    x = torch.tensor([1.0, -2.0])
    total = dist.all_reduce_sum(x)
    assert total.tolist() == [3.0, -3.0] and x.tolist() == [1.0, -2.0]  # (x) + (x + 1)
    assert dist.all_reduce_mean(3.0) == 3.5 and dist.all_reduce_mean(x).tolist() == [1.5, -1.5]
    assert dist.all_reduce_max(3.0) == 4.0 and dist.all_reduce_max(x).tolist() == [2.0, -1.0]
    assert dist.any_rank(False)  # the other rank holds 0 + 1: true there
    rows = torch.tensor([[1.0, 2.0]])
    assert dist.all_gather_rows(rows).tolist() == [[2.0, 3.0], [1.0, 2.0]]  # rank 0's rows first
    assert dist.share("mine") == ("from rank", 0)
    # sum_parts: one all-reduce of every name's parts, names back in their own rows whatever the dict order
    parts = dist.sum_parts({"b": [torch.tensor(1.0), torch.tensor(2.0)], "a": [torch.tensor(3.0), torch.tensor(4.0)]})
    assert {k: [v.item() for v in vs] for k, vs in parts.items()} == {"a": [7.0, 9.0], "b": [3.0, 5.0]}


def test_any_rank_is_false_only_when_every_rank_is_false(monkeypatch):
    """any_rank: true on every rank when one rank's flag is true, false when none is (three ranks)."""
    for mine, theirs, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        FakeWorld(monkeypatch, rank=0, size=3, peer=lambda t, theirs=theirs: torch.full_like(t, float(theirs)))
        assert dist.any_rank(mine) is expected, (mine, theirs)


def test_sum_parts_in_one_process_keeps_each_name_its_own_numbers():
    """One process: sum_parts is the identity, each name keeping its parts even when the dict is not sorted."""
    parts = dist.sum_parts({"z": [torch.tensor(1.0), torch.tensor(2.0)], "a": [torch.tensor(5.0), torch.tensor(6.0)]})
    assert {k: [v.item() for v in vs] for k, vs in parts.items()} == {"z": [1.0, 2.0], "a": [5.0, 6.0]}


def test_on_main_runs_alone_and_solo_ends_with_its_block(monkeypatch):
    """Rank 0's on_main runs fn as a world of one (no collective inside can wait for rank 1); after the block
    the process is rank 0 of 2 again, also when fn raised."""
    FakeWorld(monkeypatch, rank=0)
    seen = dist.on_main(lambda: (dist.world_size(), dist.rank(), dist.is_distributed(), dist.share("inside")))
    assert seen == (1, 0, False, "inside")
    assert dist.is_distributed() and dist.world_size() == 2
    with pytest.raises(KeyError):
        with dist.solo():
            raise KeyError("x")
    assert dist.is_distributed()


def test_rank_slices_split_every_global_batch_without_overlap_or_oversize(monkeypatch):
    """For every world size, batch and grad_accum that divide: the ranks' micro-batches tile [0, batch) in rank
    order, each rank has ceil(grad_accum / N) of them (at most its rows) and none is larger than batch / grad_accum
    (the micro-batch asked for); worked examples by hand."""
    world = {"size": 1, "rank": 0}
    monkeypatch.setattr(dist, "world_size", lambda: world["size"])
    monkeypatch.setattr(dist, "rank", lambda: world["rank"])
    for size in (1, 2, 3, 4):
        for batch in range(size, 25, size):
            for accum in (a for a in range(1, batch + 1) if batch % a == 0):
                rows, counts = [], []
                for r in range(size):
                    world.update(size=size, rank=r)
                    slices = dist.rank_slices(batch, accum)
                    counts.append(len(slices))
                    rows += [i for s in slices for i in range(s.start, s.stop)]
                    assert all(0 < s.stop - s.start <= batch // accum for s in slices), (size, batch, accum, slices)
                assert rows == list(range(batch)), (size, batch, accum)
                assert counts == [min(batch // size, -(-accum // size))] * size, (size, batch, accum)
    world.update(size=4, rank=2)
    assert dist.rank_slices(24, 6) == [slice(12, 15), slice(15, 18)]  # ceil(6 / 4) = 2 micro-batches of 3
    world.update(size=4, rank=1)
    assert dist.rank_slices(20, 10) == [slice(5, 6), slice(6, 8), slice(8, 10)]  # 5 rows in 3 pieces
    world.update(size=1, rank=0)
    with pytest.raises(ValueError, match="--batch_size=10 must be divisible by --grad_accum=4"):
        dist.rank_slices(10, 4)


def test_shard_bounds_tile_the_items(monkeypatch):
    """shard_bounds: rank r of N gets [r * n / N, (r + 1) * n / N); n not divisible by N is an error."""
    monkeypatch.setattr(dist, "world_size", lambda: 4)
    for r, expected in enumerate([(0, 2), (2, 4), (4, 6), (6, 8)]):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        assert dist.shard_bounds(8) == expected
    with pytest.raises(ValueError, match="10 items cannot be split evenly between 4 processes"):
        dist.shard_bounds(10)


def test_data_parallel_wraps_a_partly_frozen_model_and_unwrap_peels_every_layer(monkeypatch):
    """DDP wraps any model with a trainable parameter (a frozen embedding does not exempt the rest), without
    buffer sync in forward under either keyword; unwrap removes nested DDP / torch.compile wrappers."""
    FakeWorld(monkeypatch, rank=1)
    made = []

    class OldDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            super().__init__()
            self.module = module
            made.append({"device_ids": device_ids, "broadcast_buffers": broadcast_buffers})

    class NewDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None, forward_sync_buffers=True):
            super().__init__()
            self.module = module
            made.append({"device_ids": device_ids, "forward_sync_buffers": forward_sync_buffers})

    model = torch.nn.Sequential(torch.nn.Embedding(3, 2), torch.nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    for cls, key in ((OldDDP, "broadcast_buffers"), (NewDDP, "forward_sync_buffers")):
        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", cls)
        wrapped = dist.data_parallel(model)
        assert isinstance(wrapped, cls) and wrapped.module is model and made[-1] == {"device_ids": None, key: False}
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    assert dist.data_parallel(frozen) is frozen

    class Compiled(torch.nn.Module):  # what torch.compile returns: the model as _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert dist.unwrap(Compiled(OldDDP(Compiled(model)))) is model


def test_collective_error_hint_only_for_a_failed_collective_in_a_distributed_run(monkeypatch):
    """The hint (naming the timeout) follows gloo/NCCL/connection errors in a distributed run only."""
    error = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert dist.collective_error_hint(error) == ""  # one process: no peer to blame
    FakeWorld(monkeypatch, rank=0)
    monkeypatch.setenv(dist.TIMEOUT_ENV, "45")
    for e in (error, RuntimeError("Connection reset by peer"), RuntimeError("NCCL error: unhandled system error")):
        assert "another process ended, or did not join it within 45 s (MINIRLHF_DIST_TIMEOUT)" in \
            dist.collective_error_hint(e)
    assert dist.collective_error_hint(ValueError("--batch_size=9 must be divisible")) == ""


def test_timeout_is_a_positive_number_of_seconds(monkeypatch):
    """Unset or empty: 1800 s; '0', a negative number, 'nan', 'inf' and more than 1e9 s are ValueErrors naming the
    variable ('inf' used to reach datetime.timedelta in init() as a bare OverflowError traceback); 1e9 s works."""
    monkeypatch.delenv(dist.TIMEOUT_ENV, raising=False)
    assert dist.timeout_seconds() == 1800.0
    monkeypatch.setenv(dist.TIMEOUT_ENV, "")
    assert dist.timeout_seconds() == 1800.0
    monkeypatch.setenv(dist.TIMEOUT_ENV, "2.5")
    assert dist.timeout_seconds() == 2.5
    monkeypatch.setenv(dist.TIMEOUT_ENV, "1e9")
    assert dist.datetime.timedelta(seconds=dist.timeout_seconds()).days == 11574
    for raw in ("0", "-3", "nan", "inf", "1e300", "2e9"):
        monkeypatch.setenv(dist.TIMEOUT_ENV, raw)
        with pytest.raises(ValueError, match=f"MINIRLHF_DIST_TIMEOUT='{raw}': expected a positive number of seconds"):
            dist.timeout_seconds()


def test_init_needs_torchruns_variables_only_for_several_processes(monkeypatch):
    """WORLD_SIZE=1 (torchrun --nproc_per_node=1, or set by hand) runs as one process without a process group;
    WORLD_SIZE=2 without RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT names them and says how to launch."""
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", dist.TIMEOUT_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist.init()
    assert not dist.dist.is_initialized() and dist.world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set: "
                                           r"launch with `torchrun --nproc_per_node=2 -m minirlhf"):
        dist.init()
    assert not dist.dist.is_initialized()


def test_finish_in_one_process_is_sys_exit():
    """One process: finish(code) is sys.exit(code) (exit handlers run; no os._exit)."""
    with pytest.raises(SystemExit) as e:
        dist.finish(3)
    assert e.value.code == 3
