"""The "epx" expert-parallel implementation for Hugging Face transformers.

    import epx.transformers   # registers "epx"
    model = AutoModelForCausalLM.from_pretrained(
        path, distributed_config=DistributedConfig(ep_size=N, fsdp_size=N, ep_implementation="epx"))

Every MoE layer's token exchange then runs over epx: each rank dispatches
the tokens it holds (global expert ids) to the ranks of their experts, runs
its experts on the rows it received (local expert ids, unit weights, as the
experts' own forward expects), and combines the outputs back with the
routing weights applied, in fp32 and in a fixed order.  Gradients flow back
to every token's rank, routing weights included (epx.torch).

One engine per MoE layer, built on its first call over the expert-parallel
group (bootstrapped through torch.distributed, collectively).  Its token
capacity follows the largest batch seen: a call whose batch exceeds it fails
on every rank together (the library agrees the failure), every rank then
learns the largest batch and the engines grow, and the call is redone.
"""

import torch
import torch.distributed as dist

from transformers.distributed.expert_parallel import EPImplementation, EPImplementationInterface

from . import _C
from . import torch as et
from .comm import Comm
from .moe import MoE

__all__ = ["EpxEP"]

_comms = {}  # one communicator per process group


def _comm_for(group):
    c = _comms.get(group)
    if c is None or c.closed:
        c = _comms[group] = Comm.from_torch(group)
    return c


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


class EpxEP(EPImplementation):
    """Expert parallelism over epx (see the module's docstring)."""

    def __init__(self, experts, ep_mesh, tp_mesh):
        super().__init__(experts, ep_mesh, tp_mesh)
        if tp_mesh.size() > 1:
            raise NotImplementedError('ep_implementation="epx" runs with tp_size 1 (each rank holds '
                                      "its own batch); use \"all_to_all\" with tensor parallelism")
        self.group = ep_mesh.get_group()
        self.moe = None
        self.capacity = 0

    def _engine(self, hidden, topk, tokens, dtype):
        """The layer's engine; created on the first call (every rank makes
        it).  A batch above its capacity is left to fail in dispatch, on
        every rank at once, rather than grown here on this rank alone."""
        moe = self.moe
        if moe is not None and moe.hidden == hidden and moe.topk == topk and moe.dtype == (
                0 if dtype == torch.bfloat16 else 1):
            return moe
        return self._grow(hidden, topk, tokens, dtype)

    def _grow(self, hidden, topk, tokens, dtype, agreed=False):
        """(Re)create the engine, collectively, for the largest batch of any
        rank (`tokens` is already that maximum when `agreed`).  The old
        engine is not closed: autograd graphs of earlier calls still hold it
        for their backward, and it goes with them."""
        if not agreed:
            size = torch.tensor([tokens], dtype=torch.int64)
            dist.all_reduce(size, op=dist.ReduceOp.MAX, group=self.group)
            tokens = int(size)
        cap = max(tokens, self.capacity, 1)
        cap = 1 << (cap - 1).bit_length()  # grow by powers of two
        comm = _comm_for(self.group)
        self.moe = MoE(comm, hidden, self.num_local_experts * comm.size, topk, cap,
                       dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
        self.capacity = cap
        return self.moe

    def __call__(self, hidden_states, top_k_index, top_k_weights):
        x = _local(hidden_states)
        idx = _local(top_k_index)
        w = _local(top_k_weights)
        out_dtype = x.dtype
        if x.dtype not in (torch.bfloat16, torch.float32):
            x = x.float()  # the engine carries bf16 or fp32
        T, H = x.shape
        K = idx.shape[-1]
        moe = self._engine(H, K, T, x.dtype)
        try:
            d = et.dispatch(moe, x.contiguous(), idx, w)
        except _C.Error as e:
            # The library failed the call on every rank at once (the rank at
            # fault: its error; the others: PeerError).  Agree on why: a batch
            # above the capacity grows the engine on every rank and the call
            # is redone; anything else is raised on every rank.
            other = not isinstance(e, (_C.RangeError, _C.PeerError))
            why = torch.tensor([T, int(other)], dtype=torch.int64)
            dist.all_reduce(why, op=dist.ReduceOp.MAX, group=self.group)
            if int(why[1]) or int(why[0]) <= self.capacity:
                raise
            moe = self._grow(H, K, int(why[0]), x.dtype, agreed=True)
            d = et.dispatch(moe, x.contiguous(), idx, w)
        rows = d.x
        counts = d.expert_counts
        expert_ids = torch.repeat_interleave(torch.arange(len(counts)), counts).unsqueeze(-1)
        ones = torch.ones(expert_ids.shape, dtype=rows.dtype)
        if rows.shape[0] == 0:
            # keep the (empty) rows connected to backward, as transformers' own
            # implementations do, so the experts' gradient hooks still run
            y = self.experts_forward(rows.sum(dim=0, keepdim=True), expert_ids.new_zeros((1, 1)),
                                     ones.new_ones((1, 1)))[:0]
        else:
            y = self.experts_forward(rows, expert_ids, ones)
        out = et.combine(moe, y, d, w)
        return out.to(out_dtype)


EPImplementationInterface.register("epx", EpxEP)
