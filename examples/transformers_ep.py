#!/usr/bin/env python3
"""Expert parallelism over epx in Hugging Face transformers, end to end.

    torchrun --nproc-per-node 2 examples/transformers_ep.py [--model qwen3_moe|deepseek_v4] [--check]

Every rank builds the same small random-weight model from its config class
(nothing is downloaded) and saves it; then loads it with

    DistributedConfig(ep_size=N, fsdp_size=N, ep_implementation="epx")

so each rank holds 1/N of the experts and every MoE layer's tokens travel
over epx.  Each rank runs a training step on its own slice of the batch.
With --check, rank 0 also runs the whole batch in one process without
expert parallelism and compares the logits (float32: relative error at most
1e-5).  Runs on CPUs with gloo; no GPU needed.
"""

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist

import epx.transformers  # noqa: F401  registers ep_implementation="epx"
from transformers import AutoModelForCausalLM, DeepseekV4Config, Qwen3MoeConfig
from transformers.distributed import DistributedConfig

EXPERTS, TOPK, VOCAB, BATCH, SEQ = 8, 2, 128, 4, 16


def config(model):
    common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, max_position_embeddings=64,
                  num_experts_per_tok=TOPK, tie_word_embeddings=False, use_cache=False)
    if model == "qwen3_moe":
        return Qwen3MoeConfig(**common, num_hidden_layers=2, num_key_value_heads=1, head_dim=16,
                              intermediate_size=32, moe_intermediate_size=16, num_experts=EXPERTS,
                              norm_topk_prob=True)
    return DeepseekV4Config(  # DeepSeek-V4 scaled down: one layer of each attention kind
        **common, num_hidden_layers=3, moe_intermediate_size=16, num_key_value_heads=1, head_dim=16,
        q_lora_rank=16, n_routed_experts=EXPERTS, n_shared_experts=1,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        mlp_layer_types=["moe", "moe", "moe"], hc_mult=2, hc_sinkhorn_iters=3, sliding_window=8,
        o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["qwen3_moe", "deepseek_v4"], default="qwen3_moe")
    ap.add_argument("--check", action="store_true", help="compare with a single-process run")
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    # The same random weights on every rank (a checkpoint would be shared instead).
    path = os.path.join(tempfile.mkdtemp(prefix="epx-example-"), args.model)
    torch.manual_seed(0)
    cls = AutoModelForCausalLM.from_config(config(args.model)).__class__
    model = cls(config(args.model)).float()
    with torch.no_grad():  # routers far from ties, so both runs pick the same experts
        for name, m in model.named_modules():
            if name.endswith("mlp.gate"):
                m.weight.normal_(0.0, 0.5)
    model.save_pretrained(path)
    del model

    ep = DistributedConfig(ep_size=world, fsdp_size=world, ep_implementation="epx")
    model = AutoModelForCausalLM.from_pretrained(path, distributed_config=ep, dtype=torch.float32,
                                                 attn_implementation="eager")
    batch = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    mine = batch.chunk(world)[rank]
    out = model(input_ids=mine, labels=mine)
    out.loss.backward()  # gradients cross back over epx to every token's rank
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    logits = [torch.empty_like(out.logits) for _ in range(world)]
    dist.all_gather(logits, out.logits.detach().contiguous())
    if rank == 0:
        print(f"{args.model}: {world} ranks, experts over epx, loss {loss.item() / world:.6f}")
        if args.check:
            ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
            want = ref(input_ids=batch).logits.detach()
            got = torch.cat(logits)
            rel = ((got - want).abs().max() / want.abs().max()).item()
            print(f"logits vs one process: relative error {rel:.2e}")
            if rel > 1e-5:
                sys.exit(1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # gloo's threads can abort the interpreter's shutdown after
    # destroy_process_group (about 1 run in 50 here); everything is done
    sys.stdout.flush()
    os._exit(0)
