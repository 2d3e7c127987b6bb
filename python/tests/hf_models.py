"""Tiny random-weight Hugging Face MoE models for the expert-parallel tests.

Shared by ``test_transformers_ep.py`` (which builds the models and runs the single-process reference) and
``hf_ep_worker.py`` (which runs the same models with expert parallelism under ``torchrun``).

Everything here is deterministic: the weights come from ``torch.manual_seed(seed)`` and are written with
``save_pretrained``; both the reference and the workers load them back with ``from_pretrained``, so they run on
exactly the same float32 values.

Result file format (``torch.save`` of a dict), written by :func:`run_reference` and by the worker:

    model       family name, e.g. "qwen3_moe"
    impl        EP implementation name ("reference" for the single-process run)
    world_size  number of processes (1 for the reference)
    input_ids   LongTensor [BATCH, SEQ_LEN], the full global batch
    loss        float32 scalar: mean next-token cross-entropy over the full global batch
    logits      float32 [BATCH, SEQ_LEN, vocab], for the full global batch (in batch order)
    grads       dict parameter name -> full float32 gradient (or None where the parameter got no gradient)
    experts_implementation, attn_implementation: the kernels the model ran with
"""

from __future__ import annotations

import os

import torch


FAMILIES = ("deepseek_v4", "qwen3_moe", "mixtral", "deepseek_v3")

VOCAB_SIZE = 128
NUM_EXPERTS = 8  # divisible by 2 and 4 ranks
TOP_K = 2
BATCH = 4  # sequences in the global batch: divisible by 1, 2 and 4 ranks
SEQ_LEN = 16
MODEL_SEED = 0
BATCH_SEED = 1234
# Standard deviation of the router weights. Larger than the default initializer range so the top-k choices are
# far from ties: a tie broken differently by a different summation order would route a token elsewhere and make
# single-process and expert-parallel runs diverge for reasons that have nothing to do with the EP exchange.
ROUTER_STD = 0.5

ATTN_IMPLEMENTATION = "eager"


def make_config(family: str):
    """A scaled-down config of `family`: a few layers, hidden size 32, NUM_EXPERTS routed experts, top-TOP_K."""
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        num_experts_per_tok=TOP_K,
        tie_word_embeddings=False,
        use_cache=False,
    )
    if family == "deepseek_v4":
        from transformers import DeepseekV4Config

        # One layer of each attention kind and one hash-routed MoE layer, so every V4 code path is exercised.
        return DeepseekV4Config(
            **{**common, "num_hidden_layers": 3},
            moe_intermediate_size=16,
            num_key_value_heads=1,
            head_dim=16,
            q_lora_rank=16,
            n_routed_experts=NUM_EXPERTS,
            n_shared_experts=1,
            layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
            compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
            mlp_layer_types=["hash_moe", "moe", "moe"],
            hc_mult=2,
            hc_sinkhorn_iters=3,
            sliding_window=8,
            o_groups=2,
            o_lora_rank=8,
            index_n_heads=2,
            index_head_dim=8,
            index_topk=4,
        )
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            **common,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=32,
            moe_intermediate_size=16,
            num_experts=NUM_EXPERTS,
            norm_topk_prob=True,
        )
    if family == "mixtral":
        from transformers import MixtralConfig

        return MixtralConfig(
            **common, num_key_value_heads=1, head_dim=16, intermediate_size=16, num_local_experts=NUM_EXPERTS
        )
    if family == "deepseek_v3":
        from transformers import DeepseekV3Config

        # First layer dense, second MoE; a single routing group so group-limited routing does not drop experts.
        return DeepseekV3Config(
            **common,
            num_key_value_heads=2,
            intermediate_size=32,
            moe_intermediate_size=16,
            n_routed_experts=NUM_EXPERTS,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
        )
    raise ValueError(f"unknown model family {family!r}; known: {FAMILIES}")


def _model_class(family: str):
    import transformers

    return {
        "deepseek_v4": transformers.DeepseekV4ForCausalLM,
        "qwen3_moe": transformers.Qwen3MoeForCausalLM,
        "mixtral": transformers.MixtralForCausalLM,
        "deepseek_v3": transformers.DeepseekV3ForCausalLM,
    }[family]


def build_model(family: str, model_dir: str | os.PathLike, seed: int = MODEL_SEED):
    """Build a random-weight `family` model from `seed` and save it (config + safetensors) into `model_dir`."""
    config = make_config(family)
    torch.manual_seed(seed)
    model = _model_class(family)(config).to(torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("mlp.gate") and getattr(module, "weight", None) is not None:
                module.weight.normal_(0.0, ROUTER_STD, generator=generator)
            # DeepSeek-V4 hash routing: a fixed token -> experts table, zeros after init (real checkpoints ship
            # it). Give every token TOP_K distinct experts so the hash layers spread the tokens over all ranks.
            tid2eid = getattr(module, "tid2eid", None)
            if isinstance(tid2eid, torch.Tensor):
                rows = [torch.randperm(NUM_EXPERTS, generator=generator)[:TOP_K] for _ in range(tid2eid.shape[0])]
                tid2eid.copy_(torch.stack(rows).to(tid2eid.dtype))
    model.save_pretrained(model_dir)
    return config


def make_batch(seed: int = BATCH_SEED) -> torch.Tensor:
    """The global batch: BATCH sequences of SEQ_LEN random token ids (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_SIZE, (BATCH, SEQ_LEN), generator=generator)


def rank_slice(input_ids: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The contiguous block of sequences rank `rank` of `world_size` holds (data parallelism over FSDP ranks)."""
    if input_ids.shape[0] % world_size:
        raise ValueError(f"batch of {input_ids.shape[0]} sequences does not split over {world_size} ranks")
    per_rank = input_ids.shape[0] // world_size
    return input_ids[rank * per_rank : (rank + 1) * per_rank]


def load_model(model_dir: str | os.PathLike, distributed_config=None):
    """Load the saved model in float32 with the eager attention both sides use; train mode (no dropout is set)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32, "attn_implementation": ATTN_IMPLEMENTATION}
    if distributed_config is not None:
        kwargs["distributed_config"] = distributed_config
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.train()
    return model


def forward_backward(model, input_ids: torch.Tensor):
    """Logits and mean next-token cross-entropy of `input_ids` (labels = the inputs), then backward."""
    out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    out.loss.backward()
    return out.logits.detach().float(), out.loss.detach().float()


def result_dict(family, impl, world_size, input_ids, loss, logits, grads, model) -> dict:
    config = model.config
    return {
        "model": family,
        "impl": impl,
        "world_size": world_size,
        "input_ids": input_ids.clone(),
        "loss": loss.clone(),
        "logits": logits.clone(),
        "grads": grads,
        "experts_implementation": getattr(config, "_experts_implementation", None),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def run_reference(family: str, model_dir: str | os.PathLike, out_file: str | os.PathLike | None = None) -> dict:
    """Single-process reference on the full global batch, in the result file format."""
    model = load_model(model_dir)
    input_ids = make_batch()
    logits, loss = forward_backward(model, input_ids)
    grads = {
        name: None if param.grad is None else param.grad.detach().float().clone()
        for name, param in model.named_parameters()
    }
    result = result_dict(family, "reference", 1, input_ids, loss, logits, grads, model)
    if out_file is not None:
        torch.save(result, out_file)
    return result


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def compare_results(actual: dict, expected: dict, *, logits_rtol: float, grad_rtol: float) -> list[str]:
    """Every mismatch between an EP result and the reference, as readable lines (empty when they agree)."""
    problems = []
    if not torch.equal(actual["input_ids"], expected["input_ids"]):
        problems.append("input_ids differ: the worker did not run the reference batch")
    if actual["logits"].shape != expected["logits"].shape:
        problems.append(f"logits shape {tuple(actual['logits'].shape)} != {tuple(expected['logits'].shape)}")
    else:
        err = max_rel_error(actual["logits"], expected["logits"])
        if not err <= logits_rtol:
            problems.append(f"logits: max relative error {err:.3e} > {logits_rtol:.0e}")
    loss_err = abs(actual["loss"].item() - expected["loss"].item()) / abs(expected["loss"].item())
    if not loss_err <= logits_rtol:
        problems.append(f"loss {actual['loss'].item()!r} != {expected['loss'].item()!r} (rel {loss_err:.3e})")

    got, want = actual["grads"], expected["grads"]
    if missing := sorted(want.keys() - got.keys()):
        problems.append(f"gradients missing for {missing}")
    if extra := sorted(got.keys() - want.keys()):
        problems.append(f"unexpected gradients for {extra}")
    for name in sorted(want.keys() & got.keys()):
        g, w = got[name], want[name]
        if g is None or w is None:
            if (g is None) != (w is None):
                problems.append(f"{name}: gradient is {'None' if g is None else 'set'} but reference's is "
                                f"{'None' if w is None else 'set'}")
            continue
        if g.shape != w.shape:
            problems.append(f"{name}: gradient shape {tuple(g.shape)} != {tuple(w.shape)}")
            continue
        err = max_rel_error(g, w)
        if not err <= grad_rtol:
            ratio = (g.norm() / w.norm()).item() if w.norm() > 0 else float("nan")
            problems.append(f"{name}: gradient max relative error {err:.3e} > {grad_rtol:.0e} (norm ratio {ratio:.6f})")
    return problems
