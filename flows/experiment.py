"""The flow ``experiment``: the entry point of ``ntkflow run``/``sweep`` and of every deployment.

    config (given, or built from preset + overrides) → cluster plan → store → trials left
    → start or join the Dask cluster → workers report to the Prefect API → training resources
    → the subflow ``trials`` on that cluster (flows/trials.py)
    (nothing left: the subflow re-aggregates and records the run, with no cluster started)

The task runner is chosen per flow run (the subflow runs on the cluster started here), so a
``prefect flow-run retry`` gets its cluster back. Bad input fails the run before any trial with
the field named; the CLI turns that into exit status 2.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, tags
from prefect.states import Failed

from flows import internals, workers
from flows.server import api_settings
from flows.trials import run_trials
from ntkflow import preflight, report
from ntkflow.cluster.lifecycle import connect, start_cluster
from ntkflow.cluster.plans import resolve_cluster
from ntkflow.cluster.resources import check_resources
from ntkflow.config import Config, ConfigError
from ntkflow.config.presets import Overrides, build_config


def run_name(cfg: Config, preset: str) -> str:
    """The name of the flow run ``experiment`` (its subflow: ``<name>/trials``)."""
    return f"{cfg.run_id}-{preset}-{cfg.formulas}"


def run_tags(cfg: Config, preset: str) -> tuple[str, ...]:
    return (f"run:{cfg.run_id}", f"preset:{preset}", f"formulas:{cfg.formulas}")


def resolve_config(
    preset: str = "quick",
    overrides: Overrides = None,
    cluster: str | None = "local",
    kernels_only: bool = False,
    config: Config | dict | None = None,
) -> Config:
    """The run's config: ``config`` as given (``ntkflow run`` parses the command line once and
    passes it), else built from a deployment's preset, overrides, cluster and kernels_only."""
    if config is None:
        return build_config(preset, overrides, cluster, kernels_only)
    if isinstance(config, Config):
        return config
    from ntkflow.config import validate

    return validate(dict(config))


def _refused(e: Exception):
    """A Failed state naming the bad input; the error itself is its data (the CLI exits 2)."""
    get_run_logger().error("%s", e)
    return Failed(message=str(e), data=e)


@flow(name="experiment", log_prints=True)
def experiment(
    preset: str = "quick",
    overrides: list[str] | dict | None = None,
    out: str = "runs",
    cluster: str = "local",
    kernels_only: bool = False,
    config: Config | None = None,
):
    """An experiment from what a person types: preset, ``a.b=VALUE`` overrides (or a mapping),
    the store, the Dask cluster (local, cuda, a scheduler address or a deploy/*.yaml spec); or
    the config itself (``config``, as ``ntkflow run`` passes it).

    Checks the cluster and the store and runs the trials as the subflow ``trials`` on that
    cluster. Bad input fails the run before any trial, naming the field. A run started without
    the run's tags (a deployment's, with Prefect's random name) is named and tagged as
    ``ntkflow run`` names and tags its runs once the config is known.
    """
    log = get_run_logger()
    try:
        cfg = resolve_config(preset, overrides, cluster, kernels_only, config)
        name = run_name(cfg, preset)
        if internals.rename_flow_run(name, run_tags(cfg, preset)):
            log.info("flow run named %s", name)
        plan = resolve_cluster(cfg.compute.cluster, cfg.compute)
        store = preflight.open_store(out).child(cfg.run_id)
        trials = run_trials.with_options(flow_run_name=f"{name}/trials")
        todo, _ = report.up_to_date(cfg, store)  # decided before any cluster starts
        if not todo:
            log.info("run %s: %d trial(s), 0 to compute: no cluster", cfg.run_id, cfg.trials)
            with tags(*run_tags(cfg, preset)):
                state = trials(cfg, store.url, {}, [], return_state=True)
        else:
            log.info("run %s on %s", cfg.run_id, plan.describe())
            preload = workers.worker_imports(cfg.networks.enabled)
            started = start_cluster(plan, cfg.compute.start_timeout, preload=preload)
            with started as address, connect(address) as client:
                api = api_settings()
                n = workers.prepare_workers(client, api)
                log.info("%d worker(s) of %s report to %s", n, address, api.get("PREFECT_API_URL"))
                resources = workers.train_resources(client, plan.train_resources)
                if cfg.networks.enabled:
                    check_resources(client, resources)
                # A subflow on this cluster (its failures are in its state, never raised here);
                # runs of one experiment are found together in the UI: named and tagged by run
                # id, preset and formulas.
                on_cluster = trials.with_options(task_runner=workers.task_runner_at(address))
                with tags(*run_tags(cfg, preset)):
                    state = on_cluster(cfg, store.url, resources, todo, return_state=True)
    except ConfigError as e:
        return _refused(e)
    if state.is_completed():
        return state.result()
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result stored: the message says why
        error = None
    if isinstance(error, (ConfigError, preflight.PlaceError)):  # bad input: the CLI exits 2
        return _refused(error)
    # the subflow's own message ("1 trial(s) failed: [1]; ..."), not Prefect's "1/1 states failed"
    return Failed(message=state.message)
