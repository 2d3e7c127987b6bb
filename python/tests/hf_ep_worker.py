"""Run one tiny Hugging Face MoE model with expert parallelism and write its logits and gradients.

Run under ``torchrun --nproc-per-node N hf_ep_worker.py --model qwen3_moe --impl all_to_all --model-dir DIR
--out FILE`` (on CPU the process group is gloo). DIR holds a model saved by ``hf_models.build_model``. Rank 0
writes FILE in the format described in ``hf_models`` (the same as the single-process reference), so the two can be
compared tensor for tensor.

How the model is distributed
----------------------------
The model is loaded with ``from_pretrained(DIR, distributed_config=DistributedConfig(ep_size=N, fsdp_size=N,
ep_implementation=IMPL), dtype=torch.float32)``. With ``tp_size=1`` this builds:

* a dense mesh (pp=1, dp_replicate=1, fsdp=N, tp=1): attention, embeddings, routers, norms, shared experts and
  the LM head are FSDP2-sharded (``fully_shard``) over all N ranks;
* an expert mesh (pp=1, dp_replicate=1, efsdp=fsdp*tp/ep=1, ep=N): each ``experts`` module's ``gate_up_proj`` /
  ``down_proj`` is split on dim 0 (``grouped_gemm`` style, ``Shard(0)`` on the ep mesh), so every rank owns
  NUM_EXPERTS/N whole experts (``experts.num_experts`` becomes that local count), and ``experts.forward`` is
  replaced by the registered ``EPImplementation`` (``ep_dispatch_experts`` style). The experts module is also
  ``fully_shard``-ed on the size-1 efsdp mesh.

``tp_mesh`` (the group of ranks that share one batch) has size 1 here: every rank holds its own batch. This is
ordinary data parallelism: ``DistributedConfig.dp_size = dp_replicate_size * fsdp_size = N`` is "the number of
ranks that each see a distinct batch". So rank r feeds ``hf_models.rank_slice(batch, r, N)``, the r-th contiguous
block of BATCH/N sequences of the global batch. (Feeding every rank the whole batch would also give correct
gradients, see below, but computes everything N times; it is not what the config describes.)

What the gradients equal
------------------------
Each rank's loss L_r is the model's own loss: the mean next-token cross-entropy over its BATCH/N sequences.

* Dense (FSDP) parameters: FSDP2 reduce-scatters the gradients over the fsdp mesh and averages them (divides by
  the fsdp size N), so their gradient is (1/N) * sum_r dL_r/dtheta.
* Expert parameters: tokens from every rank reach an expert through the all-to-all, whose backward sends the
  output gradients back to the expert's rank, so the local expert gradient is already sum_r dL_r/dtheta.
  ``apply_fully_sharded_data_parallelism`` sets ``set_gradient_divide_factor(dp_size = N)`` on every
  ``ep_dispatch_experts`` module, so it too ends as (1/N) * sum_r dL_r/dtheta.
* Routing weights and the hidden states sent to other ranks get their gradients on the sender through the
  reverse exchange; they feed the router and the rest of the dense graph.

Every rank holds the same number of tokens and no label is ignored, so (1/N) * sum_r L_r is exactly the mean
cross-entropy over the whole global batch, which is what the single-process reference computes on the full batch.
(With unequal token counts per rank, or ignored labels, the mean of the ranks' means would weight tokens unequally
and the reference would have to be weighted the same way.)
Hence every gradient gathered here (``DTensor.full_tensor()``) must equal the reference gradient, and the
gathered logits (all-gathered in rank order) the reference logits, up to float32 summation-order rounding.
The loss written is the mean of the ranks' losses, i.e. the global-batch loss.

Parameters that no loss depends on (DeepSeek-V4's indexer, whose top-k selection is not differentiable) have
no gradient on any rank and are written as None, as in the reference.
"""

from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import hf_models  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=hf_models.FAMILIES)
    parser.add_argument("--impl", required=True, help='ep_implementation name, e.g. "all_to_all" or "epx"')
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def full_tensor(tensor):
    """A plain tensor with the full value of `tensor` (collective for a DTensor: call on every rank)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().float().clone()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.impl == "epx":
        import epx.transformers  # noqa: F401  (registers "epx" in EPImplementationInterface)

    from transformers.distributed import DistributedConfig

    world_size = int(os.environ["WORLD_SIZE"])
    torch.manual_seed(0)
    config = DistributedConfig(ep_size=world_size, fsdp_size=world_size, ep_implementation=args.impl)
    # from_pretrained initializes the process group (gloo on CPU) from the torchrun environment.
    model = hf_models.load_model(args.model_dir, distributed_config=config)
    rank = dist.get_rank()

    input_ids = hf_models.make_batch()
    local_ids = hf_models.rank_slice(input_ids, rank, world_size)
    local_logits, local_loss = hf_models.forward_backward(model, local_ids)

    # Logits of the whole batch, in rank (= batch) order; the loss of the whole batch.
    gathered = [torch.empty_like(local_logits) for _ in range(world_size)]
    dist.all_gather(gathered, local_logits.contiguous())
    logits = torch.cat(gathered, dim=0)
    loss = local_loss.clone()
    dist.all_reduce(loss)
    loss /= world_size

    # Same parameter order on every rank, so the gathers below line up. A parameter with a gradient on some ranks
    # and none on others (e.g. experts that got no tokens and were left out of the graph) would hang the gather:
    # find those first and fail with their names.
    params = list(model.named_parameters())
    has_grad = torch.tensor([param.grad is not None for _, param in params], dtype=torch.int32)
    fewest, most = has_grad.clone(), has_grad.clone()
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    if uneven := [name for (name, _), lo, hi in zip(params, fewest.tolist(), most.tolist()) if lo != hi]:
        raise RuntimeError(f"rank {rank}: these parameters have a gradient on some ranks only: {uneven}")
    grads = {name: None if param.grad is None else full_tensor(param.grad) for name, param in params}

    if rank == 0:
        result = hf_models.result_dict(args.model, args.impl, world_size, input_ids, loss, logits, grads, model)
        tmp = f"{args.out}.tmp"
        torch.save(result, tmp)
        os.replace(tmp, args.out)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    status = main()
    # Leave without interpreter finalization: after destroy_process_group, gloo's worker threads can still hold
    # work objects whose destruction at interpreter shutdown aborts the process ("terminate called without an
    # active exception", SIGABRT) in about 1 run in 50 here, which torchrun reports as a failure. The results are
    # written (atomically, by rank 0) and every rank has passed the barrier by now, so nothing is lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
