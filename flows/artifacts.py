"""What a run shows in the Prefect UI besides its task runs: the results table and the report
artifacts, the artifact keys, and the links to the flow runs that worked on a run folder."""

from __future__ import annotations

import base64
import hashlib
import math
import re

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ntkflow.config import Config
from ntkflow.store import Store


def artifact_key(kind: str, cfg: Config, out: str) -> str:
    """``kind-<run id>-<store digest>``: runs of one experiment in two stores keep apart."""
    return f"{kind}-{cfg.run_id}-{hashlib.sha256(out.encode()).hexdigest()[:6]}"


def _sig(v, digits: int = 4):
    """A float rounded to ``digits`` significant digits (tables stay readable)."""
    if isinstance(v, float) and math.isfinite(v) and v != 0:
        return round(v, digits - 1 - math.floor(math.log10(abs(v))))
    return v


def results_table(summary: dict) -> list[dict]:
    cols = ("n", "mean_rmse", "se", "median", "q1", "q3")
    return [
        {"method": m, **{c: _sig(s[c]) for c in cols if c in s}}
        for m, s in summary["methods"].items()
    ]


FIGURE = re.compile(r"\]\(([\w.-]+\.png)\)")  # ![...](boxplot.png): a figure beside report.md


def report_markdown(store: Store) -> str:
    """report.md with every figure it shows embedded as a data URI: the UI cannot load a path
    of the run folder (a figure left as a path shows as a broken image, only its alt text)."""

    def embed(m: re.Match) -> str:
        if not store.exists(m.group(1)):
            return m.group(0)
        png = base64.b64encode(store.read_bytes(m.group(1))).decode()
        return f"](data:image/png;base64,{png})"

    return FIGURE.sub(embed, store.read_bytes("report.md").decode())


def publish(cfg: Config, out: str, summary: dict) -> None:
    """The results table (4 significant digits) and the report, as keyed artifacts."""
    store = Store(out)
    create_table_artifact(
        results_table(summary),
        key=artifact_key("results", cfg, out),
        description=f"test RMSE per method (4 significant digits), run {cfg.run_id}",
    )
    create_markdown_artifact(
        report_markdown(store),
        key=artifact_key("report", cfg, out),
        description=f"report of run {cfg.run_id} (also {store.url}/report.md)",
    )


def flow_runs(store: Store) -> list[dict]:
    """This flow run (id, name, UI URL, and its parent `experiment` run's) after those recorded
    by earlier runs of the same id."""
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings

    prev = (store.read_json("summary.json") or {}).get("run", {}).get("flow_runs", [])
    parent = flow_run.parent_flow_run_id  # the flow `experiment` (the one to retry), if any
    this = {
        "id": str(flow_run.id),
        "name": flow_run.name,
        "url": ui_url(f"runs/flow-run/{flow_run.id}"),
        "experiment_id": parent,
        "experiment_url": ui_url(f"runs/flow-run/{parent}") if parent else None,
        "api": get_current_settings().api.url,
    }
    return [r for r in prev if isinstance(r, dict) and r.get("id") != this["id"]] + [this]


def ui_url(path: str) -> str | None:
    """The Prefect UI URL of ``path``: PREFECT_UI_URL, else the API URL without ``/api``."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    base = settings.ui_url or str(settings.api.url or "").removesuffix("/").removesuffix("/api")
    return f"{base.rstrip('/')}/{path}" if base else None
