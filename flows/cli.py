"""The ``ntkflow`` command line: the parser, its flags turned into the config and the flow's
parameters, and the dispatch to :mod:`flows.commands`. :func:`entry` is the console script
(process-wide set-up, then :func:`main`); :func:`main` parses ``argv`` and returns the exit
status, so tests call it in-process."""

from __future__ import annotations

import argparse
import sys
import textwrap

from flows import commands
from ntkflow.config import ConfigError
from ntkflow.config.presets import DEFAULT_PRESET, PRESETS, load_config, parse_vary

DESCRIPTION = (
    "ntkflow: compare wide ReLU networks with their neural tangent kernels over many trials."
)
EXAMPLES = """\
Runs the trials as a Prefect flow on a Dask cluster (by default Prefect's embedded API and a
local cluster: no server needed) and writes each run to a folder <out>/<run-id>.

examples:
  ntkflow run                                    the default preset (quick) into runs/
  ntkflow run --preset smoke --kernels-only --out /tmp/runs --set trials=4
  ntkflow report runs/<run-id>                   re-verify a run and rebuild its report

`ntkflow COMMAND --help` describes each command and its options."""
RUN_DIR_HELP = "a run folder, <out>/<run-id> (as `ntkflow run` prints it), or its fsspec URL"


def _command(sub, name: str, summary: str, example: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose help opens with ``summary`` and ends with ``example``."""
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary[0].upper() + summary[1:] + ".", width=79),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def _run_options() -> argparse.ArgumentParser:
    """The options ``run`` and ``sweep`` share (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"one of {', '.join(PRESETS)} (default {DEFAULT_PRESET}; see `ntkflow presets`)",
    )
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML overrides")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (`ntkflow presets` lists them), VALUE parsed as YAML, "
        "e.g. trials=4 (repeatable)",
    )
    p.add_argument(
        "--out",
        default="runs",
        metavar="DIR_OR_URL",
        help="where run folders go: a folder or fsspec URL (default runs/)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="local (default) | cuda | ADDRESS of an existing Dask scheduler | deploy/SPEC.yaml",
    )
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="worker processes (local/cuda)"
    )
    p.add_argument(
        "--formulas",
        choices=["exact", "published"],
        default=None,
        help="kernel formulas: exact (the correct recursions) or published (as the paper's "
        "code computed them); default: the preset's",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print the flow and task run logs (losses per epoch, task states), which "
        "always go to the Prefect API",
    )
    p.add_argument(
        "--keep-stale",
        action="store_true",
        help="reuse items computed by another code version (listed in summary.json)",
    )
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntkflow",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _run_options()
    r = _command(
        sub,
        "run",
        "run an experiment (reuses finished trials of the same run)",
        "ntkflow run --preset smoke --kernels-only --out /tmp/runs",
        parents=[shared],
    )
    r.add_argument("--kernels-only", action="store_true", help="skip the networks")
    sw = _command(
        sub,
        "sweep",
        "run the same trials with networks at several training settings (data and Grams shared)",
        "ntkflow sweep --preset smoke --widths 64,256",
        parents=[shared],
    )
    sw.set_defaults(kernels_only=False)  # a sweep varies networks: it always trains them
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
    for name, summary in [
        ("report", "re-verify and re-aggregate an existing run folder (summary, plots, report)"),
        ("verify", "deep-check every trial of a run folder; remove what fails, for a rerun"),
    ]:
        cmd = _command(sub, name, summary, f"ntkflow {name} runs/<run-id>")
        cmd.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    _command(sub, "presets", "list presets with their resolved values", "ntkflow presets")
    return p


def _int_list(text: str) -> list[int]:
    """``256,1024,4096`` → [256, 1024, 4096] (range checks are the config's)."""
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def entry() -> int:
    """The console script ``ntkflow`` (and ``python -m flows.cli``): the set-up that concerns
    the whole process, then :func:`main`. The process exits without its last garbage
    collections, reaps multiprocessing's resource tracker as it exits, and from its start a
    SIGINT/SIGTERM stops every child and exits at once (:mod:`flows.signals`)."""
    from flows.signals import exit_on_signals
    from ntkflow.cluster.processes import end_resource_tracker_at_exit, exit_without_collecting

    exit_without_collecting()
    end_resource_tracker_at_exit()
    exit_on_signals()
    return main()


def main(argv: list[str] | None = None) -> int:
    """``ntkflow ARGV``: the exit status (0 done, 1 a failed trial or check, 2 a usage error,
    with one message on stderr naming the bad value)."""
    from ntkflow.preflight import PlaceError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or argparse's usage error (2), already printed
        return e.code if isinstance(e.code, int) else commands.EXIT_CONFIG
    try:
        if args.command in ("run", "sweep"):
            cfg = _load(args)
            return commands.run(cfg, flow_parameters(args, cfg), verbose=args.verbose)
        if args.command == "presets":
            return commands.presets()
        return {"report": commands.report, "verify": commands.verify}[args.command](args.run_dir)
    except (ConfigError, PlaceError) as e:
        print(f"ntkflow: {e}", file=sys.stderr)
        return commands.EXIT_CONFIG


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


if __name__ == "__main__":
    sys.exit(entry())
