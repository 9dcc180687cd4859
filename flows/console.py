"""What the ``ntkflow`` command prints at the end of a run, a report or a rerun: the results
table, the verdict, failures, the run folder and, with a real Prefect server, the UI URLs."""

from __future__ import annotations


def print_summary(summary: dict, url: str, seconds: float | None, api: str | None = None) -> None:
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
