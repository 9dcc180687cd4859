"""The steps of one trial, as a flow task (or :func:`run_trial`) calls them: each runs its items
through :func:`ntkflow.trial.items.run` (reuse → lease → compute → save).

    kernel_part    data and every kernel's Gram and regression, under the lease ``trial``
                   (kernels only: then the result too)
    network_part   one network, under its own lease ``NN<L>``
    theory_part    that network's linearized predictors (LIN-after apart), under ``LIN<L>``
    finish_part    result.json from the stored records, under ``trial``
"""

from __future__ import annotations

from ntkflow.names import network_spec, network_specs
from ntkflow.trial.context import Trial
from ntkflow.trial.data import DataItem
from ntkflow.trial.items import REUSED, run
from ntkflow.trial.kernel import KernelItem
from ntkflow.trial.manifest import ResultItem, sweep
from ntkflow.trial.network import NetworkItem
from ntkflow.trial.theory import AfterItem, TheoryItem


def kernel_part(t: Trial, on_wait=None) -> str:
    """Data and every kernel of the trial under its lease; finishes the trial when it has no
    networks. Returns REUSED, COMPUTED or ELSEWHERE (another run did it meanwhile);
    ``on_wait(message)`` is called when the trial is running elsewhere and waited for."""
    result = ResultItem(t)
    if result.stored() is not None:
        return REUSED
    sweep(t)  # what does not belong (safe beside a live writer: see manifest.sweep)
    items = [DataItem(t), *(KernelItem(t, name) for name in t.cfg.gram_kernels)]
    (_, *records), status = run(items, on_wait, before=t.fault)
    if not t.cfg.networks.enabled:  # no network steps follow: the trial ends here
        with t.leased(result.lease, lambda: result.stored(quiet=True) is not None) as held:
            if held:
                result.compute([r for rs in records for r in rs])
    return status


def network_part(t: Trial, network: str, progress=None, on_wait=None):
    """The trial's network named ``network`` (``NN1``, ``NN1@lr=0.02``) under its own lease
    (waits for a live holder elsewhere); ``progress(epoch, row)`` follows its training.
    Returns its record."""
    item = NetworkItem(t, network_spec(t.cfg, network), progress)
    (record,), _ = run([item], on_wait, before=lambda: t.fault(item.spec.name))
    return record[0]


def theory_part(t: Trial, network: str, on_wait=None) -> list[dict]:
    """The linearized predictors of one network (after it trained), under their own lease."""
    spec = network_spec(t.cfg, network)
    (records, after), _ = run([TheoryItem(t, spec), AfterItem(t, spec)], on_wait)
    return records + after


def finish_part(t: Trial, on_wait=None) -> str:
    """Assemble result.json from the stored item records (after the network steps)."""
    return run([ResultItem(t)], on_wait)[1]


def run_trial(cfg, store, k: int, versions=None, device: str = "cpu", scheduler="sync") -> dict:
    """All of trial k in one process (the flow runs the same steps as separate tasks)."""
    t = Trial(cfg, store, k, versions, device, scheduler)
    with t.recording_errors():
        kernel_part(t)
        for s in network_specs(cfg):
            network_part(t, s.name)
            theory_part(t, s.name)
        if cfg.networks.enabled:
            finish_part(t)
    return t.result()
