"""Gram and kernel items: a kernel's Gram matrices in ``gram/<KERNEL>.zarr``, and the kernel
regression (SPEC §4) that reads them back: test RMSE and solve diagnostics."""

from __future__ import annotations

import time

from ntkflow import compute, gram, krr
from ntkflow.gram import CorruptArtifact
from ntkflow.kernels import kernel
from ntkflow.trial.context import Trial
from ntkflow.trial.data import write_group
from ntkflow.trial.items import REUSED, Item, RecordItem, log, producer, run


class GramItem(Item):
    """K(train, train) and K(test, train) of kernel ``name``, blockwise (ntkflow.gram); keyed
    by the kernel and the formula variant (not the ridge: every solve shares it)."""

    kind = "gram"

    def __init__(self, t: Trial, name: str):
        super().__init__(t)
        self.name = name
        self.rel = t.gram_path(name)
        self.arrays: dict = {}  # the host arrays of a Gram computed here in one block

    def section(self, method=None) -> dict:
        return {"kernel": self.name, "formulas": self.cfg.formulas}

    def shapes(self) -> dict:
        d = self.t.data
        n_train, n_test = len(d.train), len(d.test)
        return {"train_train": [n_train, n_train], "test_train": [n_test, n_train]}

    def stored(self, quiet: bool = False) -> dict | None:
        """The Gram's attributes if its group opens with the right shapes, kernel, data and
        key (its arrays' checksums are verified when they are read)."""
        t, rel = self.t, self.rel
        if t.store.local and not t.store.exists(rel):
            return None  # nothing there: no need to ask Zarr (a round trip to its event loop)
        try:
            _, attrs = gram.open_gram(t.store.zarr_store(rel, read_only=True), self.shapes())
            if (attrs["kernel"], attrs["formulas"]) != (self.name, self.cfg.formulas):
                raise CorruptArtifact(f"{rel} holds {attrs['kernel']}/{attrs['formulas']}")
            if attrs.get("data_sha256") != t.data_sha:
                raise CorruptArtifact(f"{rel} was computed from other data")
            if attrs.get("key") != self.key() and not self.cfg.compute.keep_stale:
                raise CorruptArtifact(f"{rel} is stale (key {attrs.get('key')})")
        except CorruptArtifact as e:
            if not quiet and t.store.exists(rel):
                log.warning("recomputing %s: %s", rel, e)
            return None
        return attrs

    def compute(self) -> dict:
        t, d = self.t, self.t.data
        kern = kernel(self.name, formulas=self.cfg.formulas)
        x = compute.to_device(d.x)
        own = {"key": self.key(), "data_sha256": t.data_sha}
        block = self.cfg.compute.gram_block
        return write_group(
            t.store,
            self.rel,
            lambda zstore: gram.write_gram(
                zstore,
                kern,
                x,
                d.train,
                d.test,
                block=block,
                scheduler=t.scheduler,
                extra_attrs=own,
                keep=self.arrays,
            ),
            small=gram.one_block(len(d.train), len(d.test), block),
        )


@producer("kernel")
class KernelItem(RecordItem):
    """Kernel regression with kernel ``name`` on its stored Gram: test RMSE and diagnostics.

    The Gram's blocks run one after another (``scheduler="sync"`` by default): the kernel
    already spreads each block over the process's threads, so running blocks in parallel would
    only oversubscribe the cores and hold more blocks in memory.
    """

    kind = "kernel"

    def __init__(self, t: Trial, name):
        super().__init__(t)
        self.name = getattr(name, "name", name)  # a name or a parsed ntkflow.names.Method
        self.methods = [self.name]

    def section(self, method=None) -> dict:
        krr_section = self.cfg.krr.model_dump(mode="json")
        return {"kernel": self.name, "formulas": self.cfg.formulas, "krr": krr_section}

    def make(self) -> list[dict]:
        t, d = self.t, self.t.data
        t0 = time.perf_counter()
        g = GramItem(t, self.name)
        (attrs,), how = run([g])  # under the trial's lease, held for every kernel
        reused = how == REUSED

        def solve():
            if g.arrays:  # just computed in one block: solve in memory, nothing read back
                k_train, k_test = g.arrays["train_train"], g.arrays["test_train"]
                return krr.predict(k_test, k_train, d.y[d.train], ridge=self.cfg.krr.ridge)
            return krr.predict_stored(
                t.store.zarr_store(g.rel, read_only=True),
                d.y[d.train],
                ridge=self.cfg.krr.ridge,
                memory_budget=self.cfg.compute.memory_budget_gb * 1e9,
                scheduler=t.scheduler,
            )

        t1 = time.perf_counter()
        try:
            pred, info = solve()
        except CorruptArtifact as e:  # an array fails its checksum (e.g. a chunk is missing)
            if not reused:
                raise
            log.warning("recomputing %s: %s", g.rel, e)
            attrs, reused = g.compute(), False
            t1 = time.perf_counter()
            pred, info = solve()
        return [
            {
                "method": self.name,
                "rmse": krr.rmse(pred, d.y[d.test]),
                **info,
                "seconds_gram": t1 - t0,
                "seconds_solve": time.perf_counter() - t1,
                "gram": g.rel,
                "gram_reused": reused,
                "gram_sha256": attrs["sha256"],
            }
        ]
