"""Communicators: the expert-parallel group."""

import os

from . import _C

__all__ = ["Comm"]


def _torch_allgather(group, rank, size):
    """An all-gather of bytes over a torch.distributed group (gloo: host
    tensors; nccl: tensors on this rank's current CUDA device)."""
    import torch
    import torch.distributed as dist

    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def allgather(data: bytes) -> bytes:
        n = len(data)
        if n == 0:
            return b""
        mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        out = torch.empty(n * size, dtype=torch.uint8, device=device)
        dist.all_gather_into_tensor(out, mine, group=group)
        return out.cpu().numpy().tobytes()

    return allgather


class Comm(_C.Comm):
    """The group of ranks that exchange tokens (epx_comm_t).

    Build it from a torch.distributed process group (:meth:`from_torch`) or
    from the environment (:meth:`from_env`).  Ranks on one host exchange
    through shared memory, ranks on other hosts through UCX.  ``rank`` and
    ``size`` are this rank and the number of ranks.  Close engines before
    their communicator (``close()``, or let both be garbage collected).
    """

    @classmethod
    def from_torch(cls, group=None, timeout=None):
        """A communicator over the ranks of a torch.distributed group (gloo
        or nccl; default: the world), bootstrapped through the group's
        all-gather.  Collective over the group.  ``timeout`` (seconds)
        bounds every wait; default EPX_TIMEOUT."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise _C.InvalidError("group: torch.distributed is not initialized "
                                  "(call torch.distributed.init_process_group first)")
        if group is None:
            group = dist.group.WORLD
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        if rank < 0:
            raise _C.InvalidError("group: this process is not a member of the group")
        return cls(rank=rank, size=size, allgather=_torch_allgather(group, rank, size),
                   timeout=float(timeout or 0.0))

    @classmethod
    def from_env(cls, timeout=None):
        """A communicator from the environment: EPX_RANK, EPX_NRANKS,
        EPX_ROOT (host:port where rank 0 listens) and EPX_JOB_KEY; under
        torchrun, RANK, WORLD_SIZE and MASTER_ADDR stand in for the first
        three, with rank 0 listening on MASTER_PORT + 1 (EPX_ROOT
        overrides it) and the job key taken from EPX_JOB_KEY or else the
        run id (TORCHELASTIC_RUN_ID): set EPX_JOB_KEY to a secret where
        other users share the network."""
        env = os.environ
        root = key = None
        added = {}
        if "EPX_RANK" not in env and "RANK" in env and "WORLD_SIZE" in env:
            # the library reads EPX_RANK / EPX_NRANKS: set for the call only
            added = {"EPX_RANK": env["RANK"], "EPX_NRANKS": env["WORLD_SIZE"]}
            if "EPX_ROOT" not in env and "MASTER_ADDR" in env:
                port = int(env.get("MASTER_PORT", "29500")) + 1
                root = f"{env['MASTER_ADDR']}:{port}"
            if "EPX_JOB_KEY" not in env:
                key = "torchrun-" + env.get("TORCHELASTIC_RUN_ID", "none") + "-" + env.get("MASTER_PORT", "")
        env.update(added)
        try:
            return cls(job_key=key, root=root, timeout=float(timeout or 0.0))
        finally:
            for k in added:
                env.pop(k, None)

    def shrink(self):
        """Elastic expert parallelism: the communicator of the ranks still
        alive, after a peer was lost (a call raised :class:`epx.PeerError`),
        or a copy of this one when none was lost (epx_comm_shrink).

        Collective over the survivors; runs without the GIL.  They agree on
        the live set (every rank any of them saw dead, or that closed this
        communicator, is out) and get a new communicator whose ranks are
        the live ones, ranked densely in their old order.  Needs nothing
        from this communicator's bootstrap (its root or the torch group may
        have lost the dead rank): the agreement and the new communicator's
        bootstrap go through this one's barrier window, so the new one never
        calls a Python all-gather, and its engines are agreed the same way.

        Returns ``(comm, live)``: the new communicator, of this object's
        class (made without calling ``__init__``), and a list of ``size``
        bools, ``live[r]`` True when old rank r is kept (its new rank is
        ``sum(live[:r])``).

        Use only the new communicator afterwards: after a loss this one's
        calls and its engines' fail (``PeerError``).  Close it and its
        engines whenever convenient, before or after the new one (or let
        the garbage collector): the library frees what they share with the
        last communicator that uses it.  A rank lost during the shrink makes it
        fail on every survivor (``PeerError``, or ``TimeoutError`` on a rank
        that never heard of the loss); ranks taken for dead are out even if
        they come back.
        """
        return super().shrink()

    def __repr__(self):
        state = "closed" if self.closed else f"rank {self.rank} of {self.size}"
        return f"epx.Comm({state})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
