"""Gram items: a kernel's Gram matrices K(train, train) and K(test, train) in
``gram/<KERNEL>.zarr``, computed blockwise (ntkflow.gram)."""

from __future__ import annotations

from ntkflow import gram
from ntkflow.cluster.resources import to_device
from ntkflow.gram import CorruptArtifact
from ntkflow.kernels import kernel
from ntkflow.trial.context import Trial
from ntkflow.trial.groups import write_group
from ntkflow.trial.items import Item, log


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
        x = to_device(d.x)
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
