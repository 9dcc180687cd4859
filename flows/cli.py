"""The ``ntkflow`` command: run an experiment (the flow ``experiment``), verify or re-aggregate
a run folder, list presets. It lives in flows/ because it starts Prefect."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ntkflow.config import ConfigError, to_yaml
from ntkflow.presets import DEFAULT_PRESET, PRESET_HELP, PRESETS, load_config, parse_vary

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
    r.add_argument(
        "--keep-stale",
        action="store_true",
        help="reuse items computed by another code version (listed in summary.json)",
    )
    sw = sub.add_parser(
        "sweep",
        parents=[r],
        add_help=False,
        help="run the same trials with networks at several training settings (data and Grams "
        "shared)",
    )
    sw.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values of one networks.* training setting (lr, epochs, batch_size, width, depths, "
        "parameterization); repeat for a grid (config key networks.vary)",
    )
    sw.add_argument(
        "--widths",
        default=None,
        type=_int_list,
        metavar="W1,W2,...",
        help="hidden-layer widths, e.g. 256,1024,4096: short for --vary networks.width=...",
    )
    sw.add_argument(
        "--keep-t",
        action="store_true",
        help="with --vary networks.lr: scale the epochs to keep t = 2·lr·epochs/batch_size",
    )
    rep = sub.add_parser("report", help="re-aggregate an existing run folder")
    rep.add_argument("run_dir")
    ver = sub.add_parser("verify", help="re-verify every trial's checksums, run id and variant")
    ver.add_argument("run_dir")
    sub.add_parser("presets", help="list presets with their resolved values")
    return p


def _int_list(text: str) -> list[int]:
    """``256,1024,4096`` → [256, 1024, 4096] (range checks are the config's)."""
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    from ntkflow.compute import end_resource_tracker_at_exit, exit_without_collecting
    from ntkflow.preflight import PlaceError

    exit_without_collecting()
    end_resource_tracker_at_exit()
    args = _parser().parse_args(argv)
    try:
        commands = {"run": cmd_run, "sweep": cmd_run, "report": cmd_report, "verify": cmd_verify}
        return {**commands, "presets": cmd_presets}[args.command](args)
    except (ConfigError, PlaceError) as e:
        print(f"ntkflow: {e}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_presets(args) -> int:
    for name in PRESETS:
        cfg = load_config(name)
        print(f"# {name}: {PRESET_HELP[name]}  (run id {cfg.run_id})")
        print(to_yaml(cfg))
    return 0


def _flags(args) -> dict:
    """The config keys the command's own flags set (None: not given)."""
    flags = {"formulas": args.formulas, "compute.n_workers": args.workers}
    if args.command == "sweep":
        if not args.vary and args.widths is None:
            raise ConfigError([("--vary", "give at least one --vary KEY=V1,V2,... or --widths")])
        flags["networks.vary"] = parse_vary(args.vary) or None
        flags["networks.widths"] = args.widths
        if args.keep_t:
            flags["networks.keep_t"] = True
    if args.keep_stale:
        flags["compute.keep_stale"] = True
    return flags


def _load(args):
    explicit = {**_flags(args), "compute.cluster": args.cluster}
    if args.kernels_only:
        explicit["networks.enabled"] = False
    if not args.out.strip():
        raise ConfigError([("--out", "is empty: give a folder or fsspec URL (default runs/)")])
    return load_config(args.preset, args.config, args.sets, **explicit)


def flow_parameters(args, cfg) -> dict:
    """The parameters of the flow ``experiment`` for this command: the config parsed once
    here (``config``), with the preset and the rest for the run's name and record."""
    return {
        "preset": args.preset or DEFAULT_PRESET,
        "out": args.out,
        "cluster": cfg.compute.cluster,
        "kernels_only": args.kernels_only,
        "config": cfg,
    }


def cmd_run(args) -> int:
    from ntkflow.preflight import PlaceError, check_cluster, check_out, open_store

    # Every config, cluster and store error surfaces here, before any work and before the run
    # folder exists.
    cfg = _load(args)
    params = flow_parameters(args, cfg)
    check_out(args.out)
    check_cluster(cfg.compute.cluster, cfg.compute.connect_timeout, cfg.compute)
    store = open_store(args.out).child(cfg.run_id)
    # Dask's INFO chatter (worker start/stop, closed comms at shutdown) hides the progress lines.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    t0 = time.monotonic()
    if not os.environ.get("PREFECT_API_URL"):  # no server to record the run: maybe start none
        from ntkflow.report import up_to_date

        todo, current = up_to_date(cfg, store)
        if not todo:
            return _nothing_to_compute(cfg, store, current, t0)
    from flows import watchdog
    from flows.runtime import exit_on_signals

    # from here on, SIGINT/SIGTERM stop the children and exit at once, and the watchdog (spared
    # by them) leaves nothing running once the command is gone (server, workers, batch jobs),
    # also after a SIGKILL
    exit_on_signals(spare=watchdog.start().pid)
    from flows.runtime import prefect_api

    print(f"ntkflow: run {cfg.run_id} → {store.url}", file=sys.stderr, flush=True)
    failed = None
    before = _summary_bytes(store)  # a summary left by an earlier run is not this run's
    with prefect_api() as (api, server):
        embedded = server is not None
        # imported while an embedded server boots (both take seconds)
        from prefect import tags

        from flows.experiment import experiment, run_name, run_tags

        if embedded:
            from ntkflow.report import import_summary_modules

            import_summary_modules()  # for the aggregation at the end, while the server boots
            server.wait()
            api = server.url
        print(f"ntkflow: Prefect API {api}{' (embedded)' if embedded else ''}", file=sys.stderr)
        if embedded and cfg.compute.cluster not in ("local", "cuda"):
            print(
                "ntkflow: workers on other machines need PREFECT_API_URL set to a reachable "
                "server (the embedded API listens on 127.0.0.1)",
                file=sys.stderr,
            )
        flow = experiment.with_options(flow_run_name=run_name(cfg, params["preset"]))
        with tags(*run_tags(cfg, params["preset"])):
            state = flow(**params, return_state=True)
        if not state.is_completed():
            try:
                failed = state.result(raise_on_failure=False)
            except Exception as e:  # noqa: BLE001 - no result stored: the state says why
                failed = e
            if isinstance(failed, (ConfigError, PlaceError)):  # refused before any trial: exit 2
                raise failed
            failed = state.message or failed or state.name
    summary = store.read_json("summary.json") if _summary_bytes(store) != before else None
    if summary is None:
        why = failed if failed is not None else f"no summary.json in {store.url}"
        print(f"ntkflow: the run failed before aggregation: {why}", file=sys.stderr)
        return 1
    _print_summary(summary, store.url, time.monotonic() - t0, None if embedded else api)
    if failed is not None:
        print(f"ntkflow: {failed}", file=sys.stderr)
        return 1
    return 0


def _nothing_to_compute(cfg, store, summary: dict | None, t0: float) -> int:
    """Every trial is complete: show the summary (re-aggregated if stale); start nothing."""
    from ntkflow.report import aggregate

    state = "current"
    if summary is None:
        before = (store.read_json("summary.json") or {}).get("run", {})
        summary = aggregate(cfg, store, {"flow_runs": before.get("flow_runs", [])})
        state = "re-aggregated"
    print(
        f"ntkflow: run {cfg.run_id} → {store.url}: {cfg.trials} trial(s), 0 to compute; "
        f"summary {state} (no Prefect server or cluster started)",
        file=sys.stderr,
    )
    _print_summary(summary, store.url, time.monotonic() - t0)
    return 1 if summary["failed_trials"] else 0


def _summary_bytes(store) -> bytes | None:
    return store.read_bytes("summary.json") if store.exists("summary.json") else None


def _run_folder(run_dir: str):
    """(config, store) of an existing run folder; (None, None) after saying why not."""
    import yaml

    from ntkflow.config import validate
    from ntkflow.presets import yaml_error_text
    from ntkflow.store import Store

    store = Store(run_dir)
    if not store.exists("config.yaml"):
        print(f"ntkflow: {run_dir!r} is not a run folder (no config.yaml)", file=sys.stderr)
        return None, None
    try:
        raw = yaml.safe_load(store.read_bytes("config.yaml").decode())
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        where = f"{store.url}/config.yaml"
        raise ConfigError([(where, f"not a readable YAML config ({yaml_error_text(e)})")]) from None
    if isinstance(raw, dict):
        raw.pop("provenance", None)
    cfg = validate(raw)
    folder = store.url.rstrip("/").rsplit("/", 1)[-1]
    if folder != cfg.run_id:
        print(
            f"ntkflow: warning: config.yaml gives run id {cfg.run_id} but the folder is "
            f"{folder!r} (config.yaml edited?): results of another run id are flagged",
            file=sys.stderr,
        )
    return cfg, store


def cmd_verify(args) -> int:
    from ntkflow.report import verify

    cfg, store = _run_folder(args.run_dir)
    if cfg is None:
        return EXIT_CONFIG
    bad = {k: p for k, p in verify(cfg, store, deep=True).items() if p}
    for k, problems in bad.items():
        for p in problems:
            print(f"trial {k:03d}: {p}")
    print(
        f"ntkflow: {cfg.trials - len(bad)} of {cfg.trials} trial(s) verified"
        + (f"; bad: {sorted(bad)} (rerun `ntkflow run` to recompute them)" if bad else ""),
        file=sys.stderr,
    )
    return 1 if bad else 0


def cmd_report(args) -> int:
    from ntkflow.report import aggregate

    cfg, store = _run_folder(args.run_dir)
    if cfg is None:
        return EXIT_CONFIG
    before = (store.read_json("summary.json") or {}).get("run", {})
    info = {"reaggregated": True, "flow_runs": before.get("flow_runs", [])}  # keep the history
    # every trial re-verified (checksums, run id, variant): a bad one is reported as failed
    summary = aggregate(cfg, store, info, deep=True)
    _print_summary(summary, store.url, None)
    return 1 if summary["failed_trials"] else 0


def _print_summary(summary: dict, url: str, seconds: float | None, api: str | None = None) -> None:
    """The results table, failures, the run folder; with a real server, the flow run's UI URL."""
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
    for v in (summary.get("verdict") or {}).values():  # report.md opens with them too
        console.print(v["sentence"], markup=False, soft_wrap=True)
    if summary["failed_trials"]:
        console.print(f"[red]failed trials: {summary['failed_trials']}[/red]")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    console.print(f"run folder: {url}{took}")
    console.print(f"report: {url}/report.md")
    last = (summary["run"].get("flow_runs") or [{}])[-1]
    if api and last.get("url"):  # the flow run to retry, and its subflow with the trial tasks
        console.print(f"Prefect UI: {last.get('experiment_url') or last['url']}", soft_wrap=True)
        if last.get("experiment_url"):
            console.print(f"trial tasks: {last['url']}", soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
