"""GPU paths: CuPy Gram chunks and a LocalCUDACluster. Skipped without a CUDA GPU."""

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

    from ntkflow import compute
    from ntkflow.config import ComputeConfig

    plan = compute.resolve_cluster("cuda", ComputeConfig(cluster="cuda"))
    with compute.start_cluster(plan) as address, Client(address) as c:
        assert compute.cluster_has_gpus(c) and plan.train_resources == {"GPU": 1}
        dev = c.submit(compute.torch_device, resources={"GPU": 1}).result()
        assert dev == "cuda:0"
