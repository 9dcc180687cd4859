"""The ``ntkflow`` command: run an experiment, re-aggregate a run, list presets."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ntkflow.config import (
    DEFAULT_PRESET,
    PRESET_HELP,
    PRESETS,
    ConfigError,
    load_config,
    to_yaml,
)

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ntkflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment (reuses finished trials of the same run)")
    r.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default quick)")
    r.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML overrides")
    r.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, VALUE parsed as YAML (repeatable)",
    )
    r.add_argument("--out", default="runs", help="output folder or fsspec URL (default runs/)")
    r.add_argument(
        "--cluster",
        default=None,
        help="local (default) | cuda | ADDRESS of an existing Dask scheduler | deploy/SPEC.yaml",
    )
    r.add_argument("--workers", type=int, default=None, help="worker processes (local/cuda)")
    r.add_argument("--formulas", choices=["exact", "published"], default=None)
    r.add_argument("--kernels-only", action="store_true", help="skip the networks")
    rep = sub.add_parser("report", help="re-aggregate an existing run folder")
    rep.add_argument("run_dir")
    sub.add_parser("presets", help="list presets with their resolved values")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "report": cmd_report, "presets": cmd_presets}[args.command](args)
    except ConfigError as e:
        print(f"ntkflow: {e}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_presets(args) -> int:
    for name in PRESETS:
        cfg = load_config(name)
        print(f"# {name}: {PRESET_HELP[name]}  (run id {cfg.run_id})")
        print(to_yaml(cfg))
    return 0


def _load(args):
    explicit = {
        "formulas": args.formulas,
        "compute.cluster": args.cluster,
        "compute.n_workers": args.workers,
    }
    if args.kernels_only:
        explicit["networks.enabled"] = False
    return load_config(args.preset, args.config, args.sets, **explicit)


def _flow_parameters(args) -> dict:
    """The parameters of the flow ``experiment`` that reproduce this command's config."""
    from ntkflow.launch import file_overrides

    sets = file_overrides(args.config) if args.config else []
    sets += args.sets
    if args.formulas:
        sets.append(f"formulas={args.formulas}")
    if args.workers is not None:
        sets.append(f"compute.n_workers={args.workers}")
    return {
        "preset": args.preset or DEFAULT_PRESET,
        "overrides": sets,
        "out": args.out,
        "cluster": args.cluster,
        "kernels_only": args.kernels_only,
    }


def cmd_run(args) -> int:
    from ntkflow import compute, launch

    cfg = _load(args)  # every config, cluster-spec and store error surfaces here, before any work
    params = {**_flow_parameters(args), "cluster": cfg.compute.cluster}
    compute.resolve_cluster(cfg.compute.cluster, cfg.compute)
    store = launch.open_store(args.out).child(cfg.run_id)
    # Dask's INFO chatter (worker start/stop, closed comms at shutdown) hides the progress lines.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from flows.experiment import experiment
    from flows.runtime import prefect_api

    print(f"ntkflow: run {cfg.run_id} → {store.url}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with prefect_api() as (api, embedded):
        print(f"ntkflow: Prefect API {api}{' (embedded)' if embedded else ''}", file=sys.stderr)
        if embedded and cfg.compute.cluster not in ("local", "cuda"):
            print(
                "ntkflow: workers on other machines need PREFECT_API_URL set to a reachable "
                "server (the embedded API listens on 127.0.0.1)",
                file=sys.stderr,
            )
        state = experiment(**params, return_state=True)
    failed = None
    if not state.is_completed():
        if isinstance(state.result(raise_on_failure=False), ConfigError):
            raise state.result(raise_on_failure=False)  # refused before any trial: exit 2
        failed = state.message
    summary = store.read_json("summary.json")
    if summary is None:
        print(f"ntkflow: the run failed before aggregation: {failed}", file=sys.stderr)
        return 1
    _print_summary(summary, store.url, time.monotonic() - t0)
    if failed is not None:
        print(f"ntkflow: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    import yaml

    from ntkflow.config import validate
    from ntkflow.report import aggregate
    from ntkflow.store import Store

    store = Store(args.run_dir)
    if not store.exists("config.yaml"):
        print(f"ntkflow: {args.run_dir!r} is not a run folder (no config.yaml)", file=sys.stderr)
        return EXIT_CONFIG
    raw = yaml.safe_load(store.read_bytes("config.yaml"))
    raw.pop("provenance", None)
    cfg = validate(raw)
    summary = aggregate(cfg, store, {"reaggregated": True})
    _print_summary(summary, store.url, None)
    return 1 if summary["failed_trials"] else 0


def _print_summary(summary: dict, url: str, seconds: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    run = summary["run"]
    title = f"run {run['run_id']} · formulas={run['formulas']} · {run['trials']} trials"
    t = Table(title=title)
    for col in ("method", "n", "mean RMSE", "SE", "median"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m, s in summary["methods"].items():
        if s.get("n"):
            t.add_row(
                m, str(s["n"]), f"{s['mean_rmse']:.4f}", f"{s['se']:.4f}", f"{s['median']:.4f}"
            )
        else:
            t.add_row(m, "0", "-", "-", "-")
    console = Console()
    console.print(t)
    if summary["failed_trials"]:
        console.print(f"[red]failed trials: {summary['failed_trials']}[/red]")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    console.print(f"run folder: {url}{took}")
    console.print(f"report: {url}/report.md")


if __name__ == "__main__":
    sys.exit(main())
