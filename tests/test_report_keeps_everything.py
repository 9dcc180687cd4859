"""The report keeps everything the run folder holds: a kernels-only command after a networks
command into the same folder (same data) keeps the networks, their theory and the verdict in
report.md and summary.json, and says which settings computed which rows."""

from __future__ import annotations

import json

from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.store import Store

NETS = ["kernels=[NTKJ1]", "networks.depths=[1]", "networks.epochs=[3]"]


def test_a_kernels_only_run_keeps_the_networks_and_the_verdict(tmp_path):
    first = load_config("smoke", overrides=NETS)
    second = load_config("smoke", overrides=["kernels=[NTKJ1, K1]", "networks.enabled=false"])
    assert first.run_id == second.run_id and "NN1" not in second.methods
    store = Store(tmp_path / first.run_id)
    for k in range(first.trials):
        trial.run_trial(first, store, k)
    before = report.aggregate(first, store)
    for k in range(second.trials):
        trial.run_trial(second, store, k)
    after = report.aggregate(second, store)

    assert list(after["methods"]) == second.methods + [m for m in first.methods if m != "NTKJ1"]
    for m in first.methods:  # the same rows, from the same records
        assert after["methods"][m] == before["methods"][m]
    assert after["verdict"] == before["verdict"] and after["verdict"]["NN1"]["n"] == 2
    assert after["theory"].keys() == {"NN1"}
    by = {m: c["by"] for m, c in after["computed_with"].items()}
    assert by["K1"] == by["NTKJ1"] == "this command" and by["NN1"] == "an earlier command"
    assert after["computed_with"]["NN1"]["settings"]["width"] == 64
    md = (tmp_path / first.run_id / "report.md").read_text()
    assert "## Verdict" in md and "| NN1 |" in md and "| K1 |" in md
    (line,) = [ln for ln in md.splitlines() if ln.startswith("- NN1, LIN1")]
    assert "an earlier command: " in line and "width=64" in line and "epochs=3" in line
    # and the networks command again: the kernel the second added stays too
    again = report.aggregate(first, store)
    assert "K1" in again["methods"] and again["computed_with"]["K1"]["by"] == "an earlier command"

    # Each method's settings are written once under its key (never one shared file rewritten
    # by every aggregation, which concurrent aggregations would overwrite with their own view).
    registry = tmp_path / first.run_id / "methods"
    entries = {p.stem: p.stat().st_mtime_ns for p in registry.glob("*.json")}
    held = {**before["methods"], **after["methods"]}
    assert len(entries) == len(held)
    report.aggregate(second, store)
    assert {p.stem: p.stat().st_mtime_ns for p in registry.glob("*.json")} == entries
    # a folder from before methods/ (one methods.json) still says who computed what
    old = {}
    for p in registry.glob("*.json"):
        e = json.loads(p.read_text())
        old.setdefault(e.pop("method"), {})[p.stem] = e
        p.unlink()
    (tmp_path / first.run_id / "methods.json").write_text(json.dumps(old))
    again = report.aggregate(first, store)  # writes its own entries anew, reads NTKJ1's etc.
    assert again["computed_with"]["K1"]["by"] == "an earlier command"
    assert again["computed_with"]["K1"]["settings"] == after["computed_with"]["K1"]["settings"]
