"""Cluster choice: local worker counts from the CPU affinity, GPUs only through declared
resources, the Slurm and Kubernetes specs rendered by their libraries, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ntkflow.cluster import lifecycle, plans, resources
from ntkflow.cluster.errors import ClusterError
from ntkflow.config import ComputeConfig, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_local_workers_follow_the_cpu_affinity():
    """Slurm and cgroups restrict the affinity mask; os.cpu_count() still reports the host."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from ntkflow.cluster import plans, resources; "
        "print(resources.default_workers(), plans.resolve_cluster('local').kwargs['n_workers'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["1", "1"]
    plan = plans.resolve_cluster("local", ComputeConfig(threads_per_worker=1))
    assert plan.kwargs["n_workers"] == len(os.sched_getaffinity(0))


def test_local_cluster_workers_see_no_gpu_and_declare_none():
    """`--cluster local` never puts trainings on cuda:0: its workers see no GPU at all."""
    from distributed import Client, LocalCluster

    plan = plans.resolve_cluster("local", ComputeConfig(n_workers=1))
    assert plan.train_resources == {}
    with LocalCluster(**plan.kwargs) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert list(seen.values()) == [""]
        assert not resources.cluster_has_gpus(client)
        resources.check_resources(client, {})  # nothing required: fine
        with pytest.raises(ClusterError, match=r"need Dask resources \{'GPU': 1\}.*--resources"):
            resources.check_resources(client, {"GPU": 1})


def test_a_process_exits_without_collecting_after_its_other_exit_handlers():
    """exit_without_collecting: exit handlers registered later (Prefect's log and event queues)
    still run first, on a collector that is not frozen; the freeze comes last, and the process
    exits normally with everything it printed."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('last', gc.get_freeze_count() > 0, flush=True))\n"
        "from ntkflow.cluster.processes import exit_without_collecting\n"
        "exit_without_collecting()\n"
        "atexit.register(lambda: print('first', gc.get_freeze_count(), flush=True))\n"
        "cycle = []; cycle.append(cycle)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["first", "0", "last", "True"]


def test_a_process_that_started_worker_processes_leaves_no_resource_tracker_behind():
    """A process that spawned worker processes (so multiprocessing started its resource
    tracker) ends the tracker and reaps it before it exits: the moment it has exited, the
    tracker is gone. (Without end_resource_tracker_at_exit the tracker outlives it until it
    reads the end of its pipe: still there at that moment in 6 runs of 6 on 2 cores.)"""
    import psutil

    code = (
        "import multiprocessing as mp\n"
        "from multiprocessing import resource_tracker\n"
        "from ntkflow.cluster.processes import end_resource_tracker_at_exit\n"
        "from ntkflow.cluster.processes import exit_without_collecting\n"
        "exit_without_collecting()\n"
        "end_resource_tracker_at_exit()\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=print); p.start(); p.join()\n"
        "    print(resource_tracker._resource_tracker._pid, flush=True)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tracker = int(res.stdout.split()[-1])
    assert not psutil.pid_exists(tracker)


def _worker_facts() -> dict:
    import signal

    from prefect.settings import get_current_settings

    return {
        "parent": os.getppid(),
        "preloaded": "flows.tasks" in sys.modules,  # before any task: the server imported it
        # a run with networks: torch too, with the plan's threads (read as the server loaded it)
        "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0,
        "pandas": "pandas" in sys.modules,  # Dask's own preload would import it: no task uses it
        "sigint_blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []),
        "hash": hash("ntkflow"),
        "api": get_current_settings().api.url,
    }


def test_local_workers_fork_from_one_server_that_imported_what_they_run():
    """A local cluster's workers are forked from one forkserver that imported what they run
    (flows.tasks: Prefect, Dask, NumPy, Zarr), not each spawned to import it again. They keep
    what a spawned worker had: SIGINT blocked, the nanny's hash seed (the same in every
    worker), the plan's thread counts as the math libraries load, the Prefect API that
    prepare_workers exports (Prefect, imported by the server, reads it again); the server
    stops with the cluster. The server does not import the optional packages of Dask's own
    preload (pandas: ~0.4 CPU-s), and that preload is marked as set so no nanny redoes it.
    A run that trains networks has torch imported there too; a kernels-only run does not
    import it at all."""
    from multiprocessing import forkserver

    import distributed.utils
    import psutil

    from flows import workers

    seed = os.environ.get("PYTHONHASHSEED") not in (None, "0") and os.environ["PYTHONHASHSEED"]
    seeded = subprocess.run(
        [sys.executable, "-c", "print(hash('ntkflow'))"],
        env={**os.environ, "PYTHONHASHSEED": seed or "6640"},
        capture_output=True,
        text=True,
        check=True,
    )
    api = "http://127.0.0.1:9/api"
    plan = plans.resolve_cluster("local", ComputeConfig(n_workers=2, threads_per_worker=2))
    with (
        lifecycle.start_cluster(plan, preload=workers.worker_imports(True)) as address,
        lifecycle.connect(address) as client,
    ):
        client.wait_for_workers(2)
        workers.prepare_workers(client, {"PREFECT_API_URL": api})
        facts = list(client.run(_worker_facts).values())
        server = psutil.Process(forkserver._forkserver._forkserver_pid)
        server_env = server.environ()
    assert [f["parent"] for f in facts] == [server.pid] * 2
    assert all(f["preloaded"] and f["sigint_blocked"] and f["api"] == api for f in facts)
    assert [f["torch_threads"] for f in facts] == [2, 2]
    assert not any(f["pandas"] for f in facts)
    assert distributed.utils._forkserver_preload_set  # so a nanny's get_mp_context imports none
    assert {f["hash"] for f in facts} == {int(seeded.stdout)}
    assert server_env["OPENBLAS_NUM_THREADS"] == server_env["OMP_NUM_THREADS"] == "2"
    assert server_env["CUDA_VISIBLE_DEVICES"] == ""
    assert not server.is_running()
    kernels_only = (
        f"import sys, {', '.join(workers.worker_imports(False))}; print(sorted(sys.modules))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", kernels_only], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "'torch'" not in imported.stdout


def test_workers_reuse_freed_memory_for_large_arrays():
    """Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_ set, so every large NumPy
    temporary is a fresh mmap, faulted in page by page (a paper trial took 1.8x its CPU); once
    prepare_workers has run, a worker reuses freed memory as a plain process does."""
    from flows import workers

    def minor_faults(n: int = 20, mib: int = 2) -> int:
        """Minor page faults of n arrays of ``mib`` MiB, each filled and freed in turn (under
        the 4 MiB from which NumPy asks for huge pages, which fault in 2 MiB at a time)."""
        import resource

        import numpy as np

        np.ones(mib * 2**17)  # the first may take fresh memory from the system
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            np.ones(mib * 2**17)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    pages = 20 * 2 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # of the 20 arrays
    plan = plans.resolve_cluster("local", ComputeConfig(n_workers=1))
    with lifecycle.start_cluster(plan) as address, lifecycle.connect(address) as client:
        (dask_default,) = client.run(minor_faults).values()
        workers.prepare_workers(client, None)
        (prepared,) = client.run(minor_faults).values()
    assert dask_default > pages / 2  # each array faulted in anew
    assert prepared < pages / 20  # the same memory, reused


def test_check_resources_accepts_a_worker_that_declares_them():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            resources={"GPU": 1},
            processes=False,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        assert resources.cluster_has_gpus(client)
        resources.check_resources(client, {"GPU": 1})
        with pytest.raises(ClusterError, match="GPU=1"):  # declared, but not enough
            resources.check_resources(client, {"GPU": 2})


def test_slurm_spec_renders_a_gpu_job_script():
    pytest.importorskip("dask_jobqueue", reason="needs the slurm extra")
    from dask_jobqueue import SLURMCluster

    plan = plans.resolve_cluster("deploy/slurm-gpu.yaml")
    assert plan.cluster_class == "dask_jobqueue.SLURMCluster"
    assert plan.train_resources == {"GPU": 1}
    assert plan.adapt == {"minimum": 0, "maximum": 8}
    cluster = SLURMCluster(**plan.kwargs)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -p gpu" in script and "#SBATCH -t 04:00:00" in script
    (worker_line,) = [ln for ln in script.splitlines() if "-m dask_cuda.cli" in ln]
    assert worker_line.rstrip().endswith("--resources GPU=1")
    assert "--nthreads 8" in worker_line


def _crd_schema():
    import dask_kubernetes

    crd = Path(dask_kubernetes.__file__).parent / (
        "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    )
    (version,) = yaml.safe_load(crd.read_text())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _k8s_plan():
    pytest.importorskip("dask_kubernetes", reason="needs the k8s extra")
    return plans.resolve_cluster("deploy/k8s-gpu.yaml")


def test_kubernetes_spec_gpu_limits_on_workers_only():
    import jsonschema
    from kubernetes.client import ApiClient

    plan = _k8s_plan()
    spec = plan.kwargs["custom_cluster_spec"]
    assert spec["kind"] == "DaskCluster" and plan.adapt == {"minimum": 1, "maximum": 8}
    jsonschema.validate(spec, _crd_schema())  # the operator's own DaskCluster schema

    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    (sched,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["args"][0] == "dask-cuda-worker" and worker["args"][-2:] == [
        "--resources",
        "GPU=1",
    ]
    assert "nvidia.com/gpu" not in json.dumps(sched)
    assert sched["resources"]["limits"]["cpu"] == worker["resources"]["limits"]["cpu"]

    # each pod spec is a valid Kubernetes PodSpec (types checked by the official client models)
    api = ApiClient()
    for role in ("worker", "scheduler"):
        pod = api._ApiClient__deserialize(spec["spec"][role]["spec"], "V1PodSpec")
        assert pod.containers[0].image == worker["image"]
    bad = json.loads(json.dumps(spec))
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"] = ["nvidia.com/gpu"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _crd_schema())


def _spec(tmp_path, body: dict) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(body))
    return str(p)


def test_bad_cluster_names_and_specs(tmp_path):
    with pytest.raises(ClusterError, match=r"unknown cluster 'deploy/nope.yaml'.*slurm-gpu"):
        plans.resolve_cluster("deploy/nope.yaml")
    with pytest.raises(ClusterError, match="unknown cluster 'gpu-box'"):
        plans.resolve_cluster("gpu-box")
    with pytest.raises(ClusterError, match=r"unknown key\(s\) \['kwarg'\]"):
        plans.resolve_cluster(_spec(tmp_path, {"class": "distributed.LocalCluster", "kwarg": 1}))
    with pytest.raises(ClusterError, match="has no cluster class 'Nope'"):
        plans.resolve_cluster(_spec(tmp_path, {"class": "distributed.Nope"}))
    with pytest.raises(ClusterError, match="adapt takes"):
        plans.resolve_cluster(
            _spec(tmp_path, {"class": "distributed.LocalCluster", "adapt": {"max": 3}})
        )
    # an error is a ConfigError for the field `cluster` (exit status 2 from the CLI)
    with pytest.raises(ConfigError) as e:
        plans.resolve_cluster("deploy/nope.yaml")
    assert e.value.errors[0][0] == "cluster"
    assert plans.resolve_cluster("tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    assert plans.resolve_cluster("scheduler:8786").train_resources is None


def test_missing_extra_is_named(tmp_path):
    """dask-cuda is not installed on the CPU machines: the error says which extra to install."""
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed here")
    except ImportError:
        pass
    for name in ("cuda", "deploy/cuda-local.yaml"):
        with pytest.raises(ClusterError, match=r"dask_cuda is not installed: `pip install 'ntk"):
            plans.resolve_cluster(name)


def test_threads_per_worker_applies_to_spec_clusters():
    """compute.threads_per_worker, when set, wins over a spec's own thread settings: the Slurm
    job's worker gets --nthreads and the math libraries' variables after the spec's prologue."""
    shipped = plans.load_spec("deploy/slurm-gpu.yaml", ComputeConfig())
    plan = plans.load_spec("deploy/slurm-gpu.yaml", ComputeConfig(threads_per_worker=3))
    assert plan.kwargs["worker_extra_args"] == [
        *shipped.kwargs["worker_extra_args"],
        "--nthreads",
        "3",
    ]
    assert plan.kwargs["job_script_prologue"][:-1] == shipped.kwargs["job_script_prologue"]
    assert "OMP_NUM_THREADS=3" in plan.kwargs["job_script_prologue"][-1]
    from dask_jobqueue import SLURMCluster

    kwargs = {**plan.kwargs, "worker_command": "distributed.cli.dask_worker"}
    kwargs["scheduler_options"] = {"dashboard_address": ":0"}
    with SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    assert script.rstrip().endswith("--nthreads 3") and "export OMP_NUM_THREADS=3" in script
    local = plans._with_threads("distributed.LocalCluster", {"env": {"A": "1"}}, 2)
    assert local["threads_per_worker"] == 2
    assert local["env"] == {"A": "1", **resources.worker_env(2)}
