"""The expert placement planner (epx_balance_plan): replicas for hot experts
and their slots, as DeepSeek's EPLB returns them; and the placement left
when ranks are lost (epx_balance_shrink), to plan over the survivors."""

from . import _C
from . import _arrays as A

__all__ = ["plan", "metrics", "shrink"]


def _torch_in(a):
    return A.is_torch(a)


def plan(loads, slots, ranks, groups=1, domains=1, policy="epx", current=None, lost=None):
    """Plan a placement of ``num_experts`` logical experts on ``slots``
    physical slots over ``ranks`` ranks.

    Args:
        loads: [experts] or [layers, experts] load per expert (tokens).
        slots: physical slots, a multiple of ``ranks``, >= experts.
        ranks: ranks; slot s lives on rank ``s // (slots // ranks)``.
        groups: expert groups (DeepSeek's node-limited routing), divides
            experts.
        domains: NVLink/host domains, divides ranks.
        policy: "epx" (never worse than "deepseek"; an expert's replicas
            share a rank only where moving one would raise the largest
            rank load) or "deepseek" (EPLB's placements).
        current: the placement in use, [layers, slots]: the epx policy keeps
            the slots whose expert stays on its rank.
        lost: elastic expert parallelism, [experts] or [layers, experts]
            (like loads), true for an expert whose weights are gone (from
            :func:`shrink`): it gets no slot (replica count 0, log2phy all
            -1) and the slots go to the available experts only; ``slots``
            then needs only be >= the available experts of every layer,
            and ``current`` must place no lost expert.

    Returns ``(phy2log, log2phy, logcnt)`` like EPLB's
    ``rebalance_experts``: [layers, slots] expert of each slot, [layers,
    experts, slots - experts + 1] slots of each expert (-1 padded; with
    ``lost``, slots minus the fewest available experts of a layer, plus 1),
    [layers, experts] replica counts; int32; 1-D loads give layer-less
    shapes.  Torch in, torch out; else numpy.
    """
    torch_out = _torch_in(loads)
    one = _ndim(loads) == 1
    if current is not None:
        current = _i32(current)
    if lost is not None:
        lost = _u8(lost)
    phy, l2p, cnt = _C.balance_plan(A.host_array(loads, "loads"), int(slots), int(ranks),
                                    int(groups), int(domains), str(policy), current, lost)
    out = tuple(A.wrap(b, torch_out) for b in (phy, l2p, cnt))
    return tuple(o[0] for o in out) if one else out


def metrics(loads, ranks, phy2log=None):
    """How even a placement is: ``(balancedness, imbalance, per_layer_balancedness,
    per_layer_imbalance)``; balancedness = mean / max rank load (1 is
    perfect).  ``phy2log`` None: the contiguous placement without replicas."""
    torch_out = _torch_in(loads)
    if phy2log is not None:
        phy2log = _i32(phy2log)
    b, i, lb, li = _C.balance_metrics(A.host_array(loads, "loads"), int(ranks), phy2log)
    return b, i, A.wrap(lb, torch_out), A.wrap(li, torch_out)


def shrink(phy2log, live, experts):
    """The placement left when ranks are lost (epx_balance_shrink), for an
    elastic engine on the survivors' communicator (:meth:`epx.Comm.shrink`).

    Args:
        phy2log: the placement in use, [slots] or [layers, slots] (int),
            every entry an expert; slot s on rank ``s // (slots // ranks)``.
        live: [ranks] booleans, true for a rank that survives (as
            ``Comm.shrink`` returns it); ranks = ``len(live)``.
        experts: the number of logical experts.

    Returns ``(new_phy2log, lost)``: the survivors keep their slots,
    renumbered densely in the old order (new rank i holds the slots of the
    i-th live rank, unchanged), [layers, live ranks x slots per rank]
    int32; and [layers, experts] uint8, 1 for an expert in no remaining
    slot (its weights are gone), the mask to give :func:`plan` as ``lost``.
    1-D phy2log gives layer-less shapes.  Torch in, torch out; else numpy.
    """
    torch_out = _torch_in(phy2log)
    one = _ndim(phy2log) == 1
    new, lost, _ = _C.balance_shrink(_i32(phy2log), _u8(live), int(experts))
    out = (A.wrap(new, torch_out), A.wrap(lost, torch_out))
    return tuple(o[0] for o in out) if one else out


def _ndim(a):
    return len(a.shape) if hasattr(a, "shape") else (2 if a and hasattr(a[0], "__len__") else 1)


def _i32(a):
    import numpy as np

    if A.is_torch(a):
        import torch

        return a.detach().to("cpu", torch.int32).contiguous()
    return np.ascontiguousarray(a, dtype=np.int32)


def _u8(a):
    """A mask (list, numpy or torch; bool or int) as bytes, 1 per true entry."""
    import numpy as np

    if A.is_torch(a):
        a = a.detach().cpu().numpy()
    return (np.asarray(a) != 0).astype(np.uint8).tobytes()
