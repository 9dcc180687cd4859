"""The bodies of the ``ntkflow`` subcommands (:mod:`flows.cli` parses the command line): run the
flow ``experiment`` (``run`` and ``sweep``), re-verify or re-aggregate a run folder, list the
presets. Each returns the command's exit status; bad input raises ConfigError or PlaceError."""

from __future__ import annotations

import os
import sys
import time

from flows import console
from flows.console import print_summary
from ntkflow.config import ConfigError, to_yaml
from ntkflow.config.presets import PRESET_HELP, PRESETS, load_config

EXIT_CONFIG = 2  # a usage error: bad input, named on stderr, nothing done


def presets() -> int:
    for name in PRESETS:
        cfg = load_config(name)
        print(f"# {name}: {PRESET_HELP[name]}  (run id {cfg.run_id})")
        print(to_yaml(cfg))
    return 0


def run(cfg, params: dict, verbose: bool = False) -> int:
    """The flow ``experiment`` with ``params`` (:func:`flows.cli.flow_parameters`) for the
    config ``cfg``: 0 when every trial succeeded, 1 otherwise. ``verbose``: the flow and task
    run logs on the console too (:func:`flows.console.configure_logging`)."""
    from ntkflow.preflight import PlaceError, check_cluster, check_out, open_store

    # Every config, cluster and store error surfaces here, before any work and before the run
    # folder exists.
    out = params["out"]
    check_out(out)
    check_cluster(cfg.compute.cluster, cfg.compute.connect_timeout, cfg.compute)
    store = open_store(out).child(cfg.run_id)
    # Dask's INFO chatter (worker start/stop, closed comms at shutdown) hides the progress lines.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    console.configure_logging(verbose)  # before Prefect is imported
    t0 = time.monotonic()
    from flows.server import check_api, configured_api_url, prefect_api

    configured = configured_api_url()  # as Prefect resolves it: environment, then profile
    if configured:
        check_api(configured)  # one that cannot record the run: exit 2, nothing started
    else:  # no server to record the run: maybe start none
        from ntkflow.report import up_to_date

        todo, current = up_to_date(cfg, store)
        if not todo:
            return _nothing_to_compute(cfg, store, current, t0)
    from flows import signals, watchdog

    # from here on the watchdog (spared by the signal handler, which stops the other children)
    # leaves nothing running once the command is gone (server, workers, batch jobs), also
    # after a SIGKILL
    signals.spare_watchdog(watchdog.start().pid)

    print(f"ntkflow: run {cfg.run_id} → {store.url}", file=sys.stderr, flush=True)
    failed = None
    before = _summary_bytes(store)  # a summary left by an earlier run is not this run's
    with prefect_api(configured) as (api, server):
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
        logs = "" if console.state["logs_on_console"] else " (-v prints the flow's logs)"
        print(f"ntkflow: the run failed before aggregation: {why}{logs}", file=sys.stderr)
        return 1
    print_summary(summary, store.url, time.monotonic() - t0, None if embedded else api)
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
    print_summary(summary, store.url, time.monotonic() - t0)
    return 1 if summary["failed_trials"] else 0


def _summary_bytes(store) -> bytes | None:
    return store.read_bytes("summary.json") if store.exists("summary.json") else None


def _run_folder(run_dir: str):
    """(config, store) of an existing run folder; (None, None) after saying why not."""
    import yaml

    from ntkflow.config import validate
    from ntkflow.config.presets import yaml_error_text
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


def verify(run_dir: str) -> int:
    from ntkflow.report import verify as verify_trials

    cfg, store = _run_folder(run_dir)
    if cfg is None:
        return EXIT_CONFIG
    bad = {k: p for k, p in verify_trials(cfg, store, deep=True).items() if p}
    for k, problems in bad.items():
        for p in problems:
            print(f"trial {k:03d}: {p}")
    print(
        f"ntkflow: {cfg.trials - len(bad)} of {cfg.trials} trial(s) verified"
        + (f"; bad: {sorted(bad)} (rerun `ntkflow run` to recompute them)" if bad else ""),
        file=sys.stderr,
    )
    return 1 if bad else 0


def report(run_dir: str) -> int:
    from ntkflow.report import aggregate

    cfg, store = _run_folder(run_dir)
    if cfg is None:
        return EXIT_CONFIG
    before = (store.read_json("summary.json") or {}).get("run", {})
    info = {"reaggregated": True, "flow_runs": before.get("flow_runs", [])}  # keep the history
    # every trial re-verified (checksums, run id, variant): a bad one is reported as failed
    summary = aggregate(cfg, store, info, deep=True)
    print_summary(summary, store.url, None)
    return 1 if summary["failed_trials"] else 0
