#!/usr/bin/env python3
"""One MoE layer's token exchange from Python over N processes, CPU tensors.

Three ways in one run, on the same tokens and routing:
  epx           epx.MoE.dispatch, identity experts (the received rows, in
                place), epx.MoE.combine (weights applied, fp32 accumulation)
  all_to_all    transformers' own "all_to_all" expert-parallel implementation
                (transformers.distributed.expert_parallel.AllToAllEP:
                torch.distributed all_to_all_single over gloo), the same
                identity experts
  copy-limit    every rank copies, at the same time, the bytes epx moves
                (its dispatch rows, one per (token, expert), and the same
                rows again for combine) between private buffers: the
                host's copy-bandwidth limit for this exchange

and the Python overhead per call: 1-token dispatch + combine through the
epx Python API (torch tensors in and out) against the same loop run by the C
API inside the extension (no Python between the calls), same engine, same
run.

Times are per iteration, slowest rank, p50 (p10..p90).  Prints a table;
--json FILE writes every figure.  Usage:

    python bench/py_moe_bench.py --ranks 4 [--tokens 256 --hidden 7168
        --experts 256 --topk 8 --iters 20 --json out.json]
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def summary(v):
    return {"p50": pct(v, 50), "p10": pct(v, 10), "p90": pct(v, 90), "n": len(v)}


def rank_main(rank, args, port, q):
    try:
        rank_run(rank, args, port, q)
    except BaseException:  # noqa: BLE001 - the parent reports it and stops
        import traceback

        q.put((rank, {"error": traceback.format_exc()}))


def progress(rank, msg):
    if rank == 0:
        print(f"py_moe_bench: {msg}", file=sys.stderr, flush=True)


def rank_run(rank, args, port, q):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import epx
    from transformers.distributed.expert_parallel import AllToAllEP

    torch.set_num_threads(1)  # ranks share the cores: one thread each
    R, T, H, E, K = args.ranks, args.tokens, args.hidden, args.experts, args.topk
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=R)
    g = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    w = torch.rand(T, K, generator=g)

    def slowest(us):
        t = torch.tensor(us, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def timed(step, iters):
        for _ in range(args.warmup):
            step()
        us = []
        for _ in range(iters):
            dist.barrier()
            t0 = time.perf_counter()
            step()
            us.append((time.perf_counter() - t0) * 1e6)
        return slowest(us)

    # epx
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.bfloat16)
    res = {}

    def epx_step():
        d = moe.dispatch(x, idx, w)
        res["epx"] = moe.combine(d.x, d)  # identity experts, outputs in place

    progress(rank, "epx")
    res["epx_us"] = timed(epx_step, args.iters)

    # transformers' all_to_all, built as transformers builds it: an EP mesh
    # of all ranks and a TP mesh of one
    mesh = init_device_mesh("cpu", (R, 1), mesh_dim_names=("ep", "tp"))

    class Experts(torch.nn.Module):
        num_experts = E // R

        def forward(self, tokens, expert_ids, weights):
            return tokens  # identity: the combine applies the routing weights

    a2a = AllToAllEP(Experts(), mesh["ep"], mesh["tp"])

    def a2a_step():
        res["a2a"] = a2a(x, idx, w)

    progress(rank, "all_to_all")
    res["a2a_us"] = timed(a2a_step, args.iters)
    err = (res["a2a"].float() - res["epx"].float()).abs().max().item()
    scale = res["a2a"].float().abs().max().item()

    # copy limit: the bytes epx moves from this rank, copied privately.
    # Expert-major dispatch puts one row per (token, expert) (what the
    # experts' grouped GEMM reads), and combine reads the same rows back.
    rows = int((idx >= 0).sum())
    src = torch.empty(rows * H, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)

    def copy_step():
        dst.copy_(src)
        src.copy_(dst)

    progress(rank, "copy-limit")
    res["copy_us"] = timed(copy_step, args.iters)
    moved_bytes = 2 * rows * H * 2

    # Python overhead: 1 token
    x1, idx1, w1 = x[:1].contiguous(), idx[:1].contiguous(), w[:1].contiguous()
    n1 = args.iters_small

    def py_loop(iters):
        """Rounds back to back, each timed, as the C loop runs them."""
        us = []
        for _ in range(iters):
            t0 = time.perf_counter()
            d = moe.dispatch(x1, idx1, w1)
            moe.combine(d.x, d)
            us.append((time.perf_counter() - t0) * 1e6)
        return us

    progress(rank, "1-token overhead")
    py_loop(args.warmup)
    moe._time_c_loop(x1, idx1, w1, args.warmup)
    py_us, c_us = [], []
    for _ in range(5):  # interleaved blocks, so drift hits both alike
        dist.barrier()
        py_us += py_loop(n1 // 5)
        dist.barrier()
        c_us += moe._time_c_loop(x1, idx1, w1, n1 // 5)
    py_us, c_us = slowest(py_us), slowest(c_us)
    moe.close()
    comm.close()
    dist.destroy_process_group()
    q.put((rank, {
        "epx_us": res["epx_us"], "a2a_us": res["a2a_us"], "copy_us": res["copy_us"],
        "py1_us": py_us, "c1_us": c_us, "max_abs_diff": err, "max_abs": scale,
        "moved_bytes": moved_bytes,
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=4, help="processes (default 4)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per rank (default 256)")
    ap.add_argument("--hidden", type=int, default=7168, help="elements per token (default 7168)")
    ap.add_argument("--experts", type=int, default=256, help="experts over all ranks (default 256)")
    ap.add_argument("--topk", type=int, default=8, help="experts per token (default 8)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    ap.add_argument("--iters-small", type=int, default=300,
                    help="1-token rounds for the Python overhead (default 300)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = ap.parse_args()
    if args.ranks < 1:
        ap.error("--ranks: want at least 1")
    if args.experts % args.ranks:
        ap.error(f"--experts {args.experts}: want a multiple of --ranks {args.ranks}")
    if not 1 <= args.topk <= args.experts:
        ap.error(f"--topk {args.topk}: want 1 .. --experts")
    if args.tokens < 1 or args.hidden < 1 or args.iters < 1 or args.iters_small < 5:
        ap.error("--tokens, --hidden, --iters: want at least 1; --iters-small at least 5")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, args, port, q)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        r, v = q.get(timeout=1800)
        if "error" in v:
            for p in procs:
                p.kill()
            sys.exit(f"py_moe_bench: rank {r} failed:\n{v['error']}")
        out[r] = v
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        sys.exit("py_moe_bench: a rank failed")
    v = out[0]  # the times are already the slowest rank's
    rows = {k: summary(v[k]) for k in ("epx_us", "a2a_us", "copy_us", "py1_us", "c1_us")}
    epx50, a2a50, copy50 = rows["epx_us"]["p50"], rows["a2a_us"]["p50"], rows["copy_us"]["p50"]
    overhead = (rows["py1_us"]["p50"] - rows["c1_us"]["p50"]) / 2
    print(f"py_moe_bench: {args.ranks} ranks, {args.tokens} tokens/rank, H {args.hidden}, E {args.experts}, "
          f"top-{args.topk}, bf16, expert-major; {args.iters} iterations after {args.warmup} warm-up")
    print(f"host: {platform.node()}, {os.cpu_count()} cores; rank 0 moves {v['moved_bytes'] / 1e6:.2f} MB per iteration")
    print("times in us, slowest rank per iteration: p50 (p10..p90)")
    for name, key in (("epx", "epx_us"), ("all_to_all (transformers)", "a2a_us"), ("copy-limit", "copy_us")):
        s = rows[key]
        print(f"  {name:28s} {s['p50']:12.0f} ({s['p10']:.0f}..{s['p90']:.0f})")
    print(f"epx vs all_to_all: {a2a50 / epx50:.2f}x (all_to_all time / epx time; > 1: epx faster)")
    print(f"epx vs copy-limit: {copy50 / epx50:.2f}x (limit time / epx time; 1: at the limit)")
    print(f"outputs: max |epx - all_to_all| = {v['max_abs_diff']:.3g} (max |out| {v['max_abs']:.3g}; "
          "bf16, epx sums in fp32)")
    print(f"1-token dispatch+combine: Python {rows['py1_us']['p50']:.1f} us, C API {rows['c1_us']['p50']:.1f} us "
          f"-> Python overhead {overhead:.1f} us per call")
    if args.json:
        import subprocess

        here = os.path.dirname(os.path.abspath(__file__))
        git = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip() != ""
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "commit": git.stdout.strip() or None, "dirty": dirty,
                       "config": vars(args), "host": platform.node(), "cores": os.cpu_count(),
                       "load_average": os.getloadavg(),
                       "summary": rows, "speedup_vs_all_to_all": a2a50 / epx50,
                       "fraction_of_copy_limit": copy50 / epx50, "python_overhead_us_per_call": overhead,
                       "max_abs_diff": v["max_abs_diff"], "moved_bytes_rank0": v["moved_bytes"],
                       "raw": v}, f, indent=1)


if __name__ == "__main__":
    main()
