"""Time one SGD step of the paper's networks, and how much of it is Python overhead.

    python benchmarks/train_step.py [--width 10000] [--depth 2] [--steps N] [--small-width 512]
                                    [--device cpu|cuda] [--threads N] [--sizing] [--json PATH]

For the paper-size network (``--width``, default 10,000) and a quick-preset-size one
(``--small-width``, default 512), batch 8, float32, ``ntkj`` parameterization, it measures

- seconds per step and steps/s of ntkflow's SGD step (``ntkflow.sgd.sgd_step``) and, for
  comparison, of the textbook autograd + ``torch.optim.SGD`` step;
- the share of step time spent outside PyTorch ops: 1 − (self time of all aten ops) / (wall time),
  both over the same torch.profiler-recorded steps. On CUDA, the share of wall time the GPU is
  idle: 1 − (kernel time) / (wall time). The profiler's own per-op cost lands outside the ops, so
  on the CPU this is an upper bound;
- the memory roofline: a step must stream every hidden weight matrix; ntkflow's step reads it
  twice (forward, backward) and reads + writes it once (update): 4 passes, vs about 6 for autograd
  + optimizer (gradient written, then read with the weights and written back). Bandwidth is
  measured with a large tensor copy (bytes read + written per second).

``--sizing`` also times complete ``train_network`` runs on a paper-shaped problem (670 training
rows, 468 fit, d_in = 15) for NN1 and NN2 at a few (width, epochs), for sizing the quick preset.

Prints a table; writes JSON (default benchmarks/results/train_step.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ntkflow.nets import build_network
from ntkflow.sgd import sgd_step as _sgd_step
from ntkflow.sgd import step_plan as _step_plan
from ntkflow.train import keras_split, set_torch_threads, train_network

BATCH = 8
D_IN = 15
N_FIT = 468


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes (read + written) per second of a large device-to-device tensor copy."""
    n = int(gib * 2**30) // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def batches(device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_FIT, D_IN, generator=g)
    x = (x / x.norm(dim=1, keepdim=True)).to(device)
    y = torch.randn(N_FIT, 1, generator=g).to(device)
    return [(x[s : s + BATCH], y[s : s + BATCH]) for s in range(0, N_FIT, BATCH)]


def time_steps(step, data, steps: int, device: str) -> float:
    """Seconds per step (median of 3 timed rounds after a warm-up)."""
    warm = max(2, steps // 10)
    for i in range(warm):
        step(*data[i % len(data)])
    sync(device)
    rounds = []
    per_round = max(1, steps // 3)
    for _ in range(3):
        t = time.perf_counter()
        for i in range(per_round):
            step(*data[i % len(data)])
        sync(device)
        rounds.append((time.perf_counter() - t) / per_round)
    return float(np.median(rounds))


def op_time_per_step(step, data, steps: int, device: str) -> tuple[float, float]:
    """Seconds per step inside aten ops (CPU: self CPU time; CUDA: kernel time) and wall seconds
    per step, both measured in the same profiled loop (the profiler slows both a little)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = max(1, min(steps, 200))
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for i in range(n):
            step(*data[i % len(data)])
        sync(device)
        wall = time.perf_counter() - t
    total_us = 0.0
    for e in prof.key_averages():
        if cuda:
            total_us += getattr(e, "self_device_time_total", None) or getattr(
                e, "self_cuda_time_total", 0.0
            )
        elif e.key.startswith("aten::"):
            total_us += e.self_cpu_time_total
    return total_us * 1e-6 / n, wall / n


def bench_width(width: int, depth: int, steps: int, device: str, bandwidth: float) -> dict:
    data = batches(device)
    net = build_network(D_IN, depth, width, "ntkj", seed=0, device=device)
    plan = _step_plan(net.layers)
    sse = torch.zeros(1, 1, device=device)

    @torch.no_grad()
    def manual(x, y):
        _sgd_step(plan, x, y, 0.002, sse)

    t_manual = time_steps(manual, data, steps, device)
    t_ops, t_profiled = op_time_per_step(manual, data, steps, device)

    ref = build_network(D_IN, depth, width, "ntkj", seed=0, device=device)
    opt = torch.optim.SGD(ref.parameters(), lr=0.002)

    def autograd(x, y):
        opt.zero_grad(set_to_none=True)
        torch.mean((ref(x) - y) ** 2).backward()
        opt.step()

    t_autograd = time_steps(autograd, data, max(3, steps // 2), device)

    hidden_bytes = sum(m.weight.numel() * 4 for m in net.layers)  # all weights, float32
    return {
        "width": width,
        "depth": depth,
        "batch": BATCH,
        "params": sum(p.numel() for p in net.parameters()),
        "sec_per_step": t_manual,
        "steps_per_s": 1 / t_manual,
        "op_sec_per_step": t_ops,
        "profiled_sec_per_step": t_profiled,
        "outside_ops_share": max(0.0, 1 - t_ops / t_profiled),
        "autograd_sec_per_step": t_autograd,
        "speedup_vs_autograd": t_autograd / t_manual,
        "weight_bytes": hidden_bytes,
        "roofline_sec_per_step_4pass": 4 * hidden_bytes / bandwidth,
        "roofline_sec_per_step_6pass": 6 * hidden_bytes / bandwidth,
        "fraction_of_roofline_4pass": 4 * hidden_bytes / bandwidth / t_manual,
    }


def sizing_runs(device: str, configs) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 7, (1000, D_IN))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.sin(3 * x[:, 0]) + x[:, 1]
    n_fit = keras_split(670)
    rows = []
    for depth, width, epochs in configs:
        net = build_network(D_IN, depth, width, "ntkj", seed=1, device=device)
        t = time.perf_counter()
        r = train_network(
            net, x[:n_fit], y[:n_fit], x[n_fit:670], y[n_fit:670], x[670:],
            epochs=epochs, seed=2, log_every=max(1, epochs // 30),
        )  # fmt: skip
        rows.append(
            {
                "depth": depth,
                "width": width,
                "epochs": epochs,
                "steps": r.steps,
                "wall_s": time.perf_counter() - t,
                "steps_per_s": r.steps_per_second,
                "final_train_loss": float(r.curve["train_loss"][-1]),
            }
        )
        print(
            f"  NN{depth} width {width:>5} epochs {epochs:>4}: {rows[-1]['wall_s']:7.1f} s "
            f"({r.steps_per_second:,.0f} steps/s)",
            flush=True,
        )
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=10_000)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps at --width")
    p.add_argument("--small-width", type=int, default=512)
    p.add_argument("--small-steps", type=int, default=1500)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sizing", action="store_true", help="also time whole training runs")
    p.add_argument("--json", default="benchmarks/results/train_step.json")
    args = p.parse_args(argv)

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if args.threads:
        set_torch_threads(args.threads)
    steps = args.steps or (300 if device == "cuda" else 20)

    bandwidth = copy_bandwidth(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")  # fmt: skip
    results = []
    for width, n in ((args.small_width, args.small_steps), (args.width, steps)):
        results.append(bench_width(width, args.depth, n, device, bandwidth))

    header = (
        f"{'width':>6} {'depth':>5} {'ms/step':>9} {'steps/s':>9} {'outside ops':>11} "
        f"{'autograd ms':>11} {'speedup':>7} {'roofline ms (4/6 pass)':>22} {'of roofline':>11}"
    )
    print(header)
    for r in results:
        print(
            f"{r['width']:>6} {r['depth']:>5} {r['sec_per_step'] * 1e3:>9.3f} "
            f"{r['steps_per_s']:>9.1f} {r['outside_ops_share']:>11.1%} "
            f"{r['autograd_sec_per_step'] * 1e3:>11.3f} {r['speedup_vs_autograd']:>7.2f} "
            f"{r['roofline_sec_per_step_4pass'] * 1e3:>10.3f} / "
            f"{r['roofline_sec_per_step_6pass'] * 1e3:>9.3f} "
            f"{r['fraction_of_roofline_4pass']:>11.1%}"
        )

    sizing = []
    if args.sizing:
        print("whole training runs (670 train rows, 468 fit, d_in 15, batch 8):")
        configs = [(d, w, e) for w, e in ((256, 300), (512, 300), (1024, 200)) for d in (1, 2)]
        sizing = sizing_runs(device, configs)

    out = {
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "results": results,
        "sizing": sizing,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
