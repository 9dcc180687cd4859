"""benchmarks/gpu_check.py and its wheel set (issue 25): the dry run of every step on the CPU,
and the wheels for a lent GPU machine resolving offline (when ``make gpu-wheels`` has run)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    """A benchmarks/ script as a module, without putting benchmarks/ on sys.path (its scripts'
    names, e.g. tables, would shadow packages for every test of this process)."""
    spec = importlib.util.spec_from_file_location(
        f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check, gpu_wheels = _load("gpu_check"), _load("gpu_wheels")

WHEELS = ROOT / ".whl"
TAGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--abi",
    "cp312",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
]
needs_wheels = pytest.mark.skipif(
    not any(WHEELS.glob("*.whl")), reason=".whl/ is empty: run `make gpu-wheels` (needs PyPI)"
)


def test_time_boxes_fit_the_check():
    # a lent machine's command gets 600 s: the steps and the installation fit in 8 minutes
    assert gpu_check.INSTALL_S + sum(gpu_check.BOXES.values()) <= gpu_check.TOTAL_S <= 480
    assert (
        list(gpu_check.BOXES) == list(gpu_check.STEPS) == ["tests", "gram", "train step", "trial"]
    )
    assert gpu_check.TRIAL_RESERVE_S < gpu_check.BOXES["trial"]


def test_plan_epochs_scales_to_the_budget():
    # paper: 59 steps per epoch; NN1 at 0.2 ms, NN2 at 1 ms a step: 35 + 354 s in full
    epochs, f = gpu_check.plan_epochs([3000, 6000], [2e-4, 1e-3], 59, 75.0)
    assert 0 < f < 1 and epochs == [int(3000 * f), int(6000 * f)]
    assert sum(e * 59 * s for e, s in zip(epochs, [2e-4, 1e-3], strict=True)) <= 75.0
    assert gpu_check.plan_epochs([3000, 6000], [1e-6, 1e-6], 59, 75.0) == ([3000, 6000], 1.0)
    assert gpu_check.plan_epochs([3000, 6000], [10.0, 10.0], 59, 1.0)[0] == [1, 1]


def test_pins_follow_pyproject():
    """The GPU check runs the versions CI tests: pyproject's pins, the gpu extra's bounds."""
    from packaging.requirements import Requirement

    pins = gpu_wheels.pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["gpu-cuda13"]
    checked = set()
    for text in reqs:
        req = Requirement(text)
        name = gpu_wheels.canonical(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name]), (text, pins[name])
            checked.add(name)
    assert {"dask", "distributed", "zarr", "pydantic", "dask-cuda"} <= checked
    # nothing pinned that the device already has
    assert not set(pins) & set(gpu_wheels.DEVICE_HAS)


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal real wheel (what ``check`` reads: its file name and METADATA)."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_check_names_every_problem(tmp_path):
    pins = tmp_path / "pins.txt"
    pins.write_text("alpha==1.0\nbeta==2.0\n# comment\ngamma==1.0\nepsilon==1.0  # why\n")
    _wheel(
        tmp_path,
        "alpha",
        "1.0",
        [
            "beta>=2",
            "numpy<2",
            "nowhere",
            "rapids-dask-dependency",
            'colorama; sys_platform == "win32"',
        ],
    )
    _wheel(tmp_path, "beta", "2.0", [])
    _wheel(tmp_path, "beta", "2.1", [])
    _wheel(tmp_path, "delta", "1.0", [])
    _wheel(tmp_path, "epsilon", "1.0", ["alpha>1.0"])
    problems = "\n".join(gpu_wheels.check(tmp_path, pins)["problems"])
    assert "two wheels of beta" in problems
    assert "gamma==1.0: no wheel" in problems
    assert "delta-1.0-py3-none-any.whl: not in pins.txt" in problems
    assert "numpy<2, but numpy may be 2.0.0" in problems  # the device has numpy 2
    assert "requires nowhere: neither shipped nor on the device" in problems
    assert "epsilon requires alpha>1.0, but alpha is 1.0" in problems
    assert "beta: wheel 2.1, pinned 2.0" in problems
    assert "colorama" not in problems and "rapids" not in problems  # marker false; not shipped
    clean = tmp_path / "clean"
    clean.mkdir()
    _wheel(clean, "alpha", "1.0", ["numpy>=1.26", "pyyaml"])
    pins.write_text("alpha==1.0\n")
    report = gpu_wheels.check(clean, pins)
    assert report["problems"] == [] and report["assumed"] == ["alpha: pyyaml"]


@needs_wheels
def test_wheel_set_resolves_offline(tmp_path):
    """Every pinned wheel is in .whl/ (one each, nothing else), installable on CPython 3.12
    manylinux x86_64 (pip's resolver, no index), every requirement met, within 60 MiB."""
    report = gpu_wheels.check(WHEELS)
    assert report["problems"] == []
    assert 0 < report["total_bytes"] <= gpu_wheels.LIMIT
    assert {w["name"] for w in report["wheels"]} == set(gpu_wheels.pins())
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--find-links",
        str(WHEELS),
        "--target",
        str(tmp_path / "t"),
        *TAGS,
        "-r",
        str(gpu_wheels.PINS),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    would = re.search(r"^Would install (.+)$", p.stdout, re.M)[1].split()
    assert len(would) == len(gpu_wheels.pins())


@needs_wheels
def test_unpacking_lays_out_what_pip_installs(tmp_path):
    """Where the GPU machine's Python has no pip, install() unpacks the wheels: the same files
    as ``pip install --target`` (console scripts and pip's own records aside)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--no-index", "--no-deps", "--no-compile", "--target", str(tmp_path / "pip"), *TAGS,
           *map(str, gpu_wheels.wheel_files(WHEELS))]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    for f in gpu_wheels.wheel_files(WHEELS):
        gpu_wheels._extract(f, tmp_path / "unpacked")

    def files(root):
        skip = re.compile(r"^bin/|\.dist-info/(RECORD|INSTALLER|REQUESTED|direct_url\.json)$")
        found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return {f for f in found if not skip.search(f)}

    pip_files, unpacked = files(tmp_path / "pip"), files(tmp_path / "unpacked")
    assert pip_files == unpacked
    assert {"dask/__init__.py", "distributed/__init__.py", "dask_cuda/__init__.py"} <= unpacked


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    """`gpu_check.py --dry-run`: every step on the CPU at tiny sizes, one row each, exit 0, and
    the JSON with what each step measured."""
    p = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("tests", "gram", "train step", "trial"):
        assert re.search(rf"^{name} +ok +\d+\.\d +\d+  \S", p.stdout, re.M), (name, p.stdout)
    report = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] and report["total_s"] < 300
    assert all(s["status"] == "ok" and s["seconds"] <= s["box_s"] for s in steps.values())
    tests = steps["tests"]
    assert tests["counts"]["skipped"] >= 8 and not tests["counts"]["passed"]
    assert any("CUDA GPU" in r for r in tests["skip_reasons"])
    assert steps["gram"]["allclose_rtol_1e-12"] and steps["gram"]["max_rel_diff"] < 1e-12
    rows = steps["train step"]["rows"]
    assert [r["depth"] for r in rows] == [1, 2]
    assert all(r["sec_per_step"] > 0 and r["bytes_per_step"] == 4 * r["weight_bytes"] for r in rows)
    trial = steps["trial"]
    assert trial["extrapolated"] and trial["epochs_run"] < trial["epochs_full"] == [3000, 6000]
    assert all(math.isfinite(trial["methods"][m]["rmse"]) for m in ("NN1", "NN2"))
    assert trial["trial_full_s_extrapolated"] > trial["trial_s"] > 0
    assert "extrapolated" in next(
        line for line in p.stdout.splitlines() if line.startswith("trial")
    )
