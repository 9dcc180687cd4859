"""Names, formatted and parsed in one place: methods, network specs, families, seed streams.

Methods (rows of results.parquet, keys of ``result.json``'s ``methods``):

    <KERNEL>                   kernel regression with an analytic kernel (``NTKB2``, ``K1``)
    NN<L>[@w<W>]               the trained network with L hidden layers (of width W in a sweep)
    LIN<L>[<variant>][@w<W>]   its linearized predictor (SPEC §6), variant "", -emp, -inf, -sgd

Seed streams: everything random in trial k derives from ``SeedSequence(seed, spawn_key=(k,))``
(:func:`ntkflow.data.trial_seed`), whose children are fixed streams:

    0 inputs x · 1 targets y · 2 train/test split   (ntkflow.data: STREAM_X, STREAM_Y, STREAM_SPLIT)
    3 networks (STREAM_NETS), itself spawned into slots: slot L ≥ 1 is the depth-L network
      (its ``torch_generator`` streams: initialisation, batch shuffle; ntkflow.nets), slot 0 the
      fixed subsample of fit points of the kernel-drift diagnostics (SPEC §6).

The data and network modules draw from these streams; this module only names and derives them
(it is not part of any item's code version, so it can be reorganised without recomputing).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # the config imports this module
    from ntkflow.config import Config

# ---- parameterizations and their analytic kernels ------------------------------------------
FAMILY_OF = {"ntkj": "NTKJ", "ntkb": "NTKB", "standard": None}  # network → analytic NTK family

THEORY_VARIANTS = ("", "-emp", "-inf", "-sgd")  # LIN<L>, LIN<L>-emp, LIN<L>-inf, LIN<L>-sgd
ANALYTIC_VARIANTS = ("", "-inf")  # need the analytic NTK of the network's family
# each variant is compared with the predictor it differs from in one respect (SPEC §6)
REFERENCE_OF = {"-emp": "", "-sgd": "-emp", "-inf": ""}


def theory_kernel(parameterization: str, depth: int) -> str | None:
    """The analytic NTK of a network (ntkj → NTKJ<L>, ntkb → NTKB<L>; none for "standard")."""
    family = FAMILY_OF[parameterization]
    return f"{family}{depth}" if family else None


# ---- method names ---------------------------------------------------------------------------
_METHOD = re.compile(r"(NN|LIN)(\d+)(-emp|-inf|-sgd)?(?:@w(\d+))?")
NETWORK_REF = re.compile(r"(\d+)/(NN\d+(?:@w\d+)?)")  # "K/NAME": one network of one trial


class Method(NamedTuple):
    """A parsed method name: ``kind`` is "network", "linearized" or "kernel"."""

    name: str
    kind: str
    depth: int | None = None
    variant: str = ""
    width: int | None = None  # only in a sweep (the "@w<W>" tag)

    @property
    def base(self) -> str:
        """The name without its sweep tag (``LIN1-sgd@w64`` → ``LIN1-sgd``)."""
        return self.name.split("@")[0]

    @property
    def network(self) -> str | None:
        """The network this method belongs to (``LIN2-emp@w8`` → ``NN2@w8``)."""
        if self.kind == "kernel":
            return None
        return f"NN{self.depth}{width_tag(self.width)}"


def parse_method(name: str) -> Method:
    """Parse a method name (anything not NN/LIN is a kernel's name)."""
    m = _METHOD.fullmatch(name)
    if m is None:
        return Method(name, "kernel")
    kind = "network" if m[1] == "NN" else "linearized"
    return Method(name, kind, int(m[2]), m[3] or "", int(m[4]) if m[4] else None)


def width_tag(width: int | None) -> str:
    return f"@w{width}" if width is not None else ""


def same_depth(a: str, b: str) -> bool:
    """Whether a paired comparison of methods ``a`` and ``b`` is of one depth and involves a
    network (``NN1`` vs ``NTKB1``)."""
    pa, pb = parse_method(a), parse_method(b)
    depth = {pa.depth or _kernel_depth(a), pb.depth or _kernel_depth(b)}
    return len(depth) == 1 and None not in depth and "network" in (pa.kind, pb.kind)


def _kernel_depth(name: str) -> int | None:
    m = re.search(r"(\d+)$", name)
    return int(m[1]) if m else None


class NetSpec(NamedTuple):
    """One network of a trial: depth, width, and the method-name tag ("" or "@w<width>")."""

    depth: int
    width: int
    tag: str

    @property
    def name(self) -> str:
        return f"NN{self.depth}{self.tag}"

    def theory_method(self, variant: str) -> str:
        return f"LIN{self.depth}{variant}{self.tag}"

    def theory_methods(self, parameterization: str) -> list[str]:
        analytic = FAMILY_OF[parameterization] is not None
        return [
            self.theory_method(v) for v in THEORY_VARIANTS if analytic or v not in ANALYTIC_VARIANTS
        ]


def network_specs(cfg: Config) -> list[NetSpec]:
    """The trial's networks: one per depth, or per (depth, width) in a sweep (tagged @w<W>)."""
    n = cfg.networks
    if not n.enabled:
        return []
    if n.widths is None:
        return [NetSpec(L, n.width, "") for L in n.depths]
    return [NetSpec(L, w, width_tag(w)) for L in n.depths for w in n.widths]


def network_spec(cfg: Config, depth: int, width: int | None = None) -> NetSpec:
    """The spec of the depth-``depth`` network (of ``width`` in a sweep)."""
    for s in network_specs(cfg):
        if s.depth == depth and (width is None or s.width == width):
            return s
    raise ValueError(f"no network of depth {depth} and width {width} in this configuration")


# ---- seed streams ---------------------------------------------------------------------------
def net_seed(cfg: Config, k: int, depth: int) -> np.random.SeedSequence:
    """Initialisation and batch order of trial k's depth-L network (independent per depth)."""
    from ntkflow.data import STREAM_NETS, stream

    return stream(cfg.seed, k, STREAM_NETS).spawn(max(cfg.networks.depths) + 1)[depth]


def ntk_subsample_seed(cfg: Config, k: int) -> np.random.SeedSequence:
    """Seed of the trial's fixed drift subsample: slot 0 of the networks' streams (depths ≥ 1)."""
    return net_seed(cfg, k, 0)
