"""Keys cover their code: a change to any module on an item's path gives that item (and what
depends on it) a new key at the next run, and nothing else; docstrings and formatting do not."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ntkflow import keys
from ntkflow.trial import items

ROOT = Path(__file__).resolve().parent.parent

# One trial, one kernel, one depth-1 network, in a copy of the project: prints each stored item's
# key and whether this run computed it (its record's file changed).
RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import ntkflow
    from ntkflow.config.presets import load_config
    from ntkflow.store import Store
    from ntkflow import trial
    assert ntkflow.__file__.startswith(sys.argv[2]), ntkflow.__file__  # the copy, not /work
    cfg = load_config("smoke", overrides=[
        "trials=1", "kernels=[NTKJ1]", "networks.depths=[1]", "networks.epochs=[2]",
        "networks.width=32", "data.n_obs=40", "networks.ntk_subsample=8",
    ])
    out = Path(sys.argv[1])
    before = {p.name: p.stat().st_mtime_ns for p in (out / "trials/000/items").glob("*.json")}
    res = trial.run_trial(cfg, Store(out), 0)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "trials/000/items").glob("*.json")}
    print(json.dumps({
        "keys": {m: r["key"] for m, r in res["methods"].items()},
        "computed": sorted(n[:-5] for n in after if before.get(n) != after[n]),
        "rmse": {m: r["rmse"] for m, r in res["methods"].items()},
    }))
    """
)


def _copy_project(dst: Path, src: Path = ROOT) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(src / "ntkflow", dst / "ntkflow", ignore=ignore)
    return dst


def _run(src: Path, out: Path) -> dict:
    from ntkflow.cluster.resources import worker_env

    # only the copy first: its ntkflow is imported; single-threaded math libraries, as on the
    # cluster's workers, so a baseline built by another xdist worker has the same last bits
    env = {**os.environ, **worker_env(1), "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(out), str(src)],
        capture_output=True,
        text=True,
        cwd=src,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _change(path: Path, docstring_only: bool = False) -> None:
    """A real change to what the module does (a new module-level statement), or a docstring."""
    text = path.read_text()
    if docstring_only:
        path.write_text(text.replace('"""', '"""Reworded. ', 1))
    else:
        path.write_text(text + "\n_KEY_COVERAGE_PROBE = 1\n")


NN, LIN = {"NN1"}, {"LIN1", "LIN1-emp", "LIN1-inf", "LIN1-sgd", "LIN1-after"}

# changed module → the methods whose items must be recomputed (every other item is reused)
CASES = {
    "trial/kernel.py": {"NTKJ1"},
    "trial/gram.py": {"NTKJ1"},  # the kernel's regression reads the new Gram
    "krr.py": {"NTKJ1", *NN, *LIN},  # solves, RMSE: used by kernel, network and theory items
    "trial/network.py": NN | LIN,  # the theory items read the network's outputs
    "trial/theory.py": LIN,
    "linearized.py": NN | LIN,  # the network's lazy-training diagnostics use it too
    "names.py": NN | LIN,  # network specs
    "seeds.py": NN | LIN,  # the seed derivation (the data's seeds change the data digest)
    "train.py": NN | LIN,
}


@pytest.fixture(scope="session")
def baseline(once):
    """The copied project and its store after one run, built once per session for every xdist
    worker (``once``); the tests copy both before changing anything."""

    def build(base: Path) -> None:
        src = _copy_project(base / "src")
        first = _run(src, base / "store")
        assert set(first["computed"]) == {"NTKJ1", *NN, *LIN}
        again = _run(src, base / "store")
        assert again["computed"] == [] and again["keys"] == first["keys"]  # unchanged: reused
        (base / "first.json").write_text(json.dumps(first))

    base = once("keys-baseline", RUN, build)
    return base, json.loads((base / "first.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(CASES))
def test_a_change_on_an_items_path_recomputes_it_and_only_what_depends_on_it(
    baseline, tmp_path, module
):
    base, first = baseline
    src = _copy_project(tmp_path / "src", base / "src")  # the baseline's code, changed once
    store = tmp_path / "store"
    shutil.copytree(base / "store", store)
    _change(src / "ntkflow" / module)
    res = _run(src, store)
    assert set(res["computed"]) == CASES[module]
    changed = {m for m in first["keys"] if res["keys"][m] != first["keys"][m]}
    assert changed == CASES[module]
    assert res["rmse"] == first["rmse"]  # the probe changes no number: recomputed bit for bit


@pytest.mark.slow
def test_docstrings_do_not_change_keys(baseline, tmp_path):
    base, first = baseline
    src = _copy_project(tmp_path / "src", base / "src")  # the baseline's code, changed once
    store = tmp_path / "store"
    shutil.copytree(base / "store", store)
    for module in CASES:
        _change(src / "ntkflow" / module, docstring_only=True)
    res = _run(src, store)
    assert res["computed"] == [] and res["keys"] == first["keys"]


def test_every_item_kind_has_a_code_version_covering_its_module_and_imports():
    assert set(items.KINDS) >= {"data", "gram", "kernel", "network", "linearized"}
    for kind, module in items.KINDS.items():
        mods = keys.code_modules(module)
        assert module in mods
        assert not any(keys._bounded(m) for m in mods if m != module), (kind, mods)
    assert "ntkflow.seeds" in keys.code_modules(items.KINDS["network"])
    assert "ntkflow.trial.network" in keys.code_modules(items.KINDS["linearized"])
    assert "ntkflow.krr" not in keys.code_modules(items.KINDS["gram"])


def test_versioning_the_code_imports_none_of_it():
    """Keys are read off the source: finding ``ntkflow.train.f`` must not import
    ``ntkflow.train`` (and torch with it) into the command that only aggregates."""
    code = (
        "import json, sys; from ntkflow.trial.items import code_versions; "
        "before = set(sys.modules); code_versions(); "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    new = set(json.loads(proc.stdout.splitlines()[-1]))
    assert not {m for m in new if m.split(".")[0] in ("torch", "ntkflow")}, sorted(new)


def test_lazy_imports_and_relative_imports_are_followed(tmp_path, monkeypatch):
    pkg = tmp_path / "ntkflow_probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "root.py").write_text("def f():\n    from ntkflow_probe.sub import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from . import other\n")
    (pkg / "sub" / "other.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(keys, "PROJECT", ("ntkflow_probe",))
    keys.code_modules.cache_clear()
    try:
        assert keys.code_modules("ntkflow_probe.root") == (
            "ntkflow_probe.root",
            "ntkflow_probe.sub.leaf",
            "ntkflow_probe.sub.other",
        )
    finally:
        keys.code_modules.cache_clear()


def _parse_while_another_thread_parses(parse) -> Exception | None:
    """``parse`` of this file in a thread whose first garbage collection (due at once, inside
    the conversion of the tree) runs a finalizer that lets another thread ``ast.parse`` at
    another stack depth before it goes on: the interleaving that broke a flow run. Returns
    what ``parse`` raised (None if nothing)."""
    import ast
    import gc
    import threading

    source = Path(__file__).read_text()
    other_done, raised = threading.Event(), []

    class Finalized:
        def __init__(self):
            self.cycle = self  # freed only by the collector, which runs __del__

        def __del__(self):
            other_done.wait(10)  # waiting gives up the GIL: the other thread parses now

    def deeper(n):
        return ast.parse(source) if n == 0 else deeper(n - 1)

    def other():
        deeper(30)
        other_done.set()

    def first():
        try:
            gc.enable()
            parse(source)
        except Exception as e:  # noqa: BLE001 - what the test reports
            raised.append(e)

    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        Finalized()
        gc.set_threshold(1)
        threads = [threading.Thread(target=first), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()
        gc.collect()
    return raised[0] if raised else None


def test_parsing_the_code_survives_another_thread_parsing_meanwhile():
    """``keys.parse`` is immune to the race; on CPython 3.11 (this project's), the race is real:
    plain ``ast.parse`` fails in it."""
    import ast

    if sys.version_info[:2] == (3, 11):
        failed = _parse_while_another_thread_parses(ast.parse)
        assert isinstance(failed, SystemError) and "recursion depth mismatch" in str(failed)
    assert _parse_while_another_thread_parses(keys.parse) is None
