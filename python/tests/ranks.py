"""Run a function on N ranks: N processes joined by a gloo
torch.distributed group (or, with backend="env", by epx's own environment
bootstrap, without torch).  Each rank's return value comes back; an
exception on any rank fails the run with that rank's traceback.  Ranks
may be made to die on purpose (``dies``), for the elastic tests."""

import multiprocessing as mp
import os
import signal
import socket
import traceback


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn, rank, n, port, backend, args, q):
    try:
        os.environ.setdefault("EPX_TIMEOUT", "60")
        if backend == "gloo":
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                    world_size=n)
        elif backend == "torchrun":  # what torchrun sets; epx listens on MASTER_PORT + 1
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port - 1))
        else:
            os.environ.update(EPX_RANK=str(rank), EPX_NRANKS=str(n), EPX_ROOT=f"127.0.0.1:{port}",
                              EPX_JOB_KEY="epx-python-tests")
        res = fn(rank, n, *args)
        q.put((rank, True, res))
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        q.put((rank, False, traceback.format_exc()))
    finally:
        if backend == "gloo":
            try:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


_ctx = None


def _context():
    """Ranks start from a fork server that has imported torch but run
    nothing with it: forking a process whose OpenMP threads have run (any
    torch op in the test process) can leave the child hung in them."""
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        mods = ["numpy"]
        try:
            import torch  # noqa: F401

            mods.append("torch")
        except ImportError:
            pass
        _ctx.set_forkserver_preload(mods)
    return _ctx


def run(fn, n, *args, backend="gloo", timeout=240, dies=()):
    """fn(rank, nranks, *args) on n ranks; returns [result of rank r].
    backend: "gloo" (a torch.distributed group), "env" (EPX_* variables)
    or "torchrun" (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT only).
    dies: ranks that must end killed by SIGKILL (they kill themselves, to
    test the survivors' recovery) without a result; their entries are
    None, and a rank of them that returns or ends otherwise fails the run."""
    ctx = _context()
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, n, port, backend, args, q)) for r in range(n)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(n - len(set(dies))):
            rank, ok, val = q.get(timeout=timeout)
            if rank in dies:
                errors.append(f"rank {rank}: should have been killed, " +
                              ("returned " + repr(val) if ok else f"failed:\n{val}"))
            elif ok:
                results[rank] = val
            else:
                errors.append(f"rank {rank}:\n{val}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for r in sorted(set(dies)):
        code = procs[r].exitcode
        if code != -signal.SIGKILL:
            errors.append(f"rank {r}: exit code {code}, expected -SIGKILL")
    if errors:
        raise AssertionError("\n".join(errors))
    return [results.get(r) for r in range(n)]
