"""epx.transformers.EpxEP on its own: the contract of transformers'
EPImplementation (global expert ids in, the experts' forward on local ids,
weighted outputs back), a rank without tokens, and the engine growing when
one rank's batch exceeds its capacity."""

import pytest

import ranks

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.distributed.expert_parallel")


def rank_ep(rank, R):
    from torch.distributed.device_mesh import init_device_mesh

    import epx.transformers as et
    from transformers.distributed.expert_parallel import EPImplementationInterface

    E, H, K = 8, 16, 2
    mesh = init_device_mesh("cpu", (R, 1), mesh_dim_names=("ep", "tp"))
    scale = torch.arange(1, E + 1, dtype=torch.float32)  # expert e multiplies by e + 1
    first = rank * (E // R)
    calls = []

    class Experts(torch.nn.Module):
        num_experts = E // R

        def forward(self, x, ids, w):
            calls.append((x.shape[0], ids.shape, w.shape))
            assert ids.min() >= 0 and ids.max() < E // R and (w == 1).all()
            return x * scale[first + ids] * w

    impl = EPImplementationInterface()["epx"](Experts(), mesh["ep"], mesh["tp"])
    assert isinstance(impl, et.EpxEP)
    g = torch.Generator().manual_seed(rank)
    outs = []
    # rank 1 holds no tokens in the second call; rank 0 then exceeds the
    # first call's capacity (the engine grows on every rank at once)
    for T in ([4, 4], [6, 0], [40, 3]):
        t = T[rank % 2]
        x = torch.randn(t, H, generator=g, requires_grad=True)
        idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(t)]) if t else \
            torch.zeros(0, K, dtype=torch.long)
        w = torch.rand(t, K, generator=g, requires_grad=True)
        out = impl(x, idx, w)
        want = (x.unsqueeze(1) * scale[idx].unsqueeze(-1) * w.unsqueeze(-1)).sum(1)
        assert torch.allclose(out, want, atol=1e-5)
        out.sum().backward()
        gx = (scale[idx] * w).sum(1, keepdim=True).expand(t, H)
        assert torch.allclose(x.grad, gx, atol=1e-5)
        assert torch.allclose(w.grad, x.detach().sum(1, keepdim=True) * scale[idx], atol=1e-4)
        outs.append(impl.capacity)
    # an error other than the capacity on one rank: raised on every rank
    # (epx.PeerError on the other), no rank left waiting to grow
    x = torch.randn(3, H)
    w = torch.rand(3, K)
    idx = torch.tensor([[0, 1]] * 3) + (E if rank == 0 else 0)
    import epx

    with pytest.raises(epx.InvalidError if rank == 0 else epx.PeerError):
        impl(x, idx, w)
    return outs


def test_epx_ep_implementation():
    caps = ranks.run(rank_ep, 2)
    assert caps[0] == caps[1] and caps[0][0] == 4 and caps[0][-1] >= 40
