"""GPU paths: CuPy Gram chunks, a LocalCUDACluster, a training step on CUDA. Skipped without a
CUDA GPU (tests/conftest.py); benchmarks/gpu_check.py runs them first on a lent GPU machine."""

import numpy as np
import pytest

from ntkflow import gram
from ntkflow.kernels import kernel
from ntkflow.store import Store

pytestmark = pytest.mark.gpu


def _x(n):
    x = np.random.default_rng(0).uniform(-5, 7, (n, 15))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["NTKB2", "NTKJ2", "GP1", "K1"])
def test_cupy_blocks_match_numpy(name):
    cupy = pytest.importorskip("cupy")
    k, x = kernel(name), _x(300)
    g = gram.gram_dask(k, cupy.asarray(x), None, 128)
    assert isinstance(g._meta, cupy.ndarray)
    got = g.compute(scheduler="sync")
    np.testing.assert_allclose(cupy.asnumpy(got), k(x), rtol=1e-12, atol=1e-14)


def test_cupy_gram_written_to_zarr(tmp_path):
    cupy = pytest.importorskip("cupy")
    k, x = kernel("NTKB1"), _x(200)
    train, test = np.arange(150), np.arange(150, 200)
    store = Store(tmp_path)
    gram.write_gram(store.zarr_store("g.zarr"), k, cupy.asarray(x), train, test, block=64)
    tt, te, _ = gram.read_gram(store.zarr_store("g.zarr", read_only=True))
    np.testing.assert_allclose(tt, k(x[train]), rtol=1e-12, atol=1e-14)


def test_local_cuda_cluster_declares_gpu_resources():
    pytest.importorskip("dask_cuda")
    from distributed import Client

    from ntkflow.cluster import lifecycle, plans, resources
    from ntkflow.config import ComputeConfig

    plan = plans.resolve_cluster("cuda", ComputeConfig(cluster="cuda"))
    with lifecycle.start_cluster(plan) as address, Client(address) as c:
        assert resources.cluster_has_gpus(c) and plan.train_resources == {"GPU": 1}
        dev = c.submit(resources.torch_device, resources={"GPU": 1}).result()
        assert dev == "cuda:0"


def test_training_step_on_cuda_matches_the_cpu():
    """One SGD step (8 fit rows, batch 8) of the same network on CUDA and on the CPU: the same
    update to float32 rounding, not just the same weights (an update is small next to them)."""
    import torch

    from ntkflow.nets import build_network
    from ntkflow.train import train_network

    def flat(net):
        return torch.cat([p.detach().reshape(-1).double().cpu() for p in net.parameters()])

    x = _x(24).astype(np.float32)
    y = np.sin(3 * x[:, 0]) + x[:, 1]
    runs = {}
    for device in ("cpu", "cuda"):
        net = build_network(15, 2, 512, "ntkj", seed=5, device=device)
        before = flat(net)
        res = train_network(
            net, x[:8], y[:8], x[8:16], y[8:16], x[16:], epochs=1, lr=0.05, seed=3, log_every=1
        )
        assert res.steps == 1 and res.device.startswith(device)
        runs[device] = (before, flat(net) - before, res)
    (b_cpu, d_cpu, r_cpu), (b_gpu, d_gpu, r_gpu) = runs["cpu"], runs["cuda"]
    assert torch.equal(b_cpu, b_gpu)  # the same initialisation on both devices
    scale = float(d_cpu.abs().max())
    assert scale > 1e-4  # the step moved the weights
    np.testing.assert_allclose(d_gpu.numpy(), d_cpu.numpy(), rtol=1e-3, atol=1e-4 * scale)
    for part in ("fit", "val", "test"):
        np.testing.assert_allclose(r_gpu.f0[part], r_cpu.f0[part], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r_gpu.pred[part], r_cpu.pred[part], rtol=1e-5, atol=1e-6)
