"""One thread at a time drives a communicator and its engines: a second
thread's call is refused (epx.StateError), and a close or release asked for
while a call runs waits for it, instead of freeing what the call uses."""

import threading
import time

import numpy as np
import pytest

import ranks


def rank_threads(rank, R):
    import epx

    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, 8, 4, 2, 4, dtype="float32")
    x = np.ones((4, 8), np.float32)
    idx = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
    w = np.full((4, 2), 0.5, np.float32)
    seen = {}
    if rank == 0:
        # a barrier that waits for rank 1 (asleep), while another thread
        # calls into the comm and closes the engine and the comm
        def other():
            time.sleep(0.3)
            try:
                moe.dispatch(x, idx, w)
            except epx.StateError as e:
                seen["refused"] = str(e)
            moe.close()
            comm.close()
            seen["closed"] = True

        t = threading.Thread(target=other)
        t.start()
        comm.barrier()
        t.join()
        assert "another thread" in seen["refused"] and seen["closed"]
        assert comm.closed and moe.closed
        with pytest.raises(epx.StateError):
            comm.barrier()
    else:
        time.sleep(1.0)
        comm.barrier()
        moe.close()
        comm.close()
    return True


def test_second_thread_refused_and_close_waits():
    ranks.run(rank_threads, 2, backend="env")


def rank_gc(rank, R):
    """Handles dropped by the garbage collector of another thread while a
    dispatch of the same engine runs are released after it."""
    import gc

    import epx

    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, 8, 4, 2, 4, dtype="float32")
    x = np.ones((4, 8), np.float32)
    idx = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
    w = np.full((4, 2), 0.5, np.float32)
    for _ in range(20):
        d = moe.dispatch(x, idx, w)
        out = moe.combine(d.x, d)
        assert np.array_equal(out, x)
        t = threading.Thread(target=lambda: gc.collect())
        t.start()
        del d
        t.join()
    return True


def test_release_from_other_threads():
    ranks.run(rank_gc, 2, backend="env")
