"""Names, formatted and parsed in one place: methods, network specs, the kernels of families.

Methods (rows of results.parquet, keys of ``result.json``'s ``methods``):

    <KERNEL>                   kernel regression with an analytic kernel (``NTKB2``, ``K1``)
    NN<L>[<TAG>]               the trained network with L hidden layers
    LIN<L>[<variant>][<TAG>]   its linearized predictor (docs/theory.md): "", -emp, -inf,
                               -sgd, -after

TAG names a sweep's grid point: ``@w<W>`` when only the width is varied (``NN1@w64``), else
``@key=value,...`` in :data:`SWEEP_KEYS` order (``NN1@lr=0.02``, ``LIN1-sgd@width=1024,lr=0.02``).

Method names are parsed here only: other modules ask these functions (:func:`parse_method`,
:func:`same_depth`, :func:`same_family`, ...) rather than slicing names.

No imports from the rest of ntkflow but two leaves: the parameterization table (the analytic
family of each network).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, NamedTuple

from ntkflow.parameterizations import NETWORK_FAMILIES, PARAMETERIZATIONS

# A run's configuration (ntkflow.config.Config): not imported, since the config imports this module.
_Config = Any

# LIN<L>, LIN<L>-emp, -inf, -sgd, -after (the empirical NTK of the trained network)
THEORY_VARIANTS = ("", "-emp", "-inf", "-sgd", "-after")
ANALYTIC_VARIANTS = ("", "-inf")  # need the analytic NTK of the network's family
# each variant is compared with the predictor it differs from in one respect (docs/theory.md)
REFERENCE_OF = {"-emp": "", "-sgd": "-emp", "-inf": "", "-after": "-emp"}


# ---- the analytic kernels of the networks' families ------------------------------------------
def theory_kernel(parameterization: str, depth: int) -> str | None:
    """The analytic NTK of a network (ntkj → NTKJ<L>, ntkb → NTKB<L>; none for "standard")."""
    family = PARAMETERIZATIONS[parameterization].family
    return f"{family}{depth}" if family else None


def family_kernels(depth: int) -> list[str]:
    """The analytic NTK at ``depth`` of every network family: ["NTKJ<L>", "NTKB<L>"]."""
    return [f"{family}{depth}" for family in NETWORK_FAMILIES]


def network_name(depth: int | None, tag: str = "") -> str:
    """``NN<L><TAG>``; ``NN<TAG>`` for a label over every depth (depth None)."""
    return f"NN{'' if depth is None else depth}{tag}"


# ---- sweeps: the grid of training settings (``networks.vary``) -----------------------------
# settings a sweep can vary, in the order a tag names them (the depth is in NN<L> itself)
SWEEP_KEYS = ("width", "lr", "epochs", "batch_size", "parameterization", "depths")
SCALE_KEYS = ("width", "lr", "epochs", "batch_size")  # plotted on log axes
MAX_GRID_POINTS = 64  # settings per depth; each is a trained network per trial


def format_value(v) -> str:
    """A setting as a tag shows it: shortest round-trip for floats (0.02, 1e-05)."""
    return repr(float(v)) if isinstance(v, float) else str(v)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def sweep_tag(point: dict) -> str:
    """The method-name tag of one grid point: "" (nothing varied but depth), ``@w64`` (width
    alone: the name width sweeps always had), else ``@width=1024,lr=0.02`` in SWEEP_KEYS order."""
    keys = [k for k in SWEEP_KEYS if k in point and k != "depths"]
    if keys == ["width"]:
        return f"@w{point['width']}"
    return "@" + ",".join(f"{k}={format_value(point[k])}" for k in keys) if keys else ""


_PAIR = r"[a-z_]+=[^,=@/\s]+"
_TAG = rf"@(?:w\d+|{_PAIR}(?:,{_PAIR})*)"


def parse_tag(tag: str) -> dict:
    """``@w64`` → {"width": 64}; ``@width=1024,lr=0.02`` → {"width": 1024, "lr": 0.02}."""
    if not tag:
        return {}
    if re.fullmatch(r"@w\d+", tag):
        return {"width": int(tag[2:])}
    return {k: parse_value(v) for k, v in (p.split("=") for p in tag[1:].split(","))}


# ---- method names ---------------------------------------------------------------------------
_VARIANT = "|".join(re.escape(v) for v in THEORY_VARIANTS if v)
_METHOD = re.compile(rf"(NN|LIN)(\d+)({_VARIANT})?({_TAG})?")
NETWORK_REF = re.compile(rf"(\d+)/(NN\d+(?:{_TAG})?)")  # "K/NAME": one network of one trial


class Method(NamedTuple):
    """A parsed method name: ``kind`` is "network", "linearized" or "kernel"."""

    name: str
    kind: str
    depth: int | None = None
    variant: str = ""
    tag: str = ""  # "" or a sweep's grid point ("@w64", "@width=1024,lr=0.02")

    @property
    def base(self) -> str:
        """The name without its sweep tag (``LIN1-sgd@w64`` → ``LIN1-sgd``)."""
        return self.name.split("@")[0]

    @property
    def settings(self) -> dict:
        return parse_tag(self.tag)

    @property
    def network(self) -> str | None:
        """The network this method belongs to (``LIN2-emp@w8`` → ``NN2@w8``)."""
        if self.kind == "kernel":
            return None
        return network_name(self.depth, self.tag)


def parse_method(name: str) -> Method:
    """Parse a method name (anything not NN/LIN is a kernel's name)."""
    m = _METHOD.fullmatch(name)
    if m is None:
        return Method(name, "kernel")
    kind = "network" if m[1] == "NN" else "linearized"
    return Method(name, kind, int(m[2]), m[3] or "", m[4] or "")


def same_depth(a: str, b: str) -> bool:
    """Whether a paired comparison of methods ``a`` and ``b`` is of one depth and involves a
    network (``NN1`` vs ``NTKB1``), of one grid point in a sweep (a kernel has none)."""
    pa, pb = parse_method(a), parse_method(b)
    depth = {pa.depth or _kernel_depth(a), pb.depth or _kernel_depth(b)}
    both = len(depth) == 1 and None not in depth and "network" in (pa.kind, pb.kind)
    return both and same_point(a, b)


def same_point(a: str, b: str) -> bool:
    """Whether methods ``a`` and ``b`` belong to one grid point of a sweep (a kernel belongs to
    every point): the pairs worth a paired comparison (a 64-point grid has ~300 methods)."""
    pa, pb = parse_method(a), parse_method(b)
    return pa.tag == pb.tag or "kernel" in (pa.kind, pb.kind)


def same_family(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one family at two depths (NTKB1 and NTKB2, NN1 and NN2):
    names ``<PREFIX><L>`` with one prefix, see :func:`depth_series`."""
    sa, sb = depth_series(a), depth_series(b)
    return sa is not None and sb is not None and sa[0] == sb[0] and sa[1] != sb[1]


def depth_series(name: str) -> tuple[str, int] | None:
    """(prefix, depth) of a name ``<PREFIX><L>``: a kernel (``NTKB2`` → ("NTKB", 2)), a network
    or its LIN predictor outside a sweep (``NN1``, ``LIN1``); None otherwise (``LIN1-emp``)."""
    m = re.fullmatch(r"([A-Z]+?)(\d+)", name)
    return (m[1], int(m[2])) if m else None


def _kernel_depth(name: str) -> int | None:
    m = re.search(r"(\d+)$", name)
    return int(m[1]) if m else None


class NetSpec(NamedTuple):
    """One network of a trial: its depth and training settings, and the method-name tag of its
    grid point ("" outside a sweep)."""

    depth: int
    width: int
    lr: float
    epochs: int
    batch_size: int
    parameterization: str
    tag: str = ""

    @property
    def name(self) -> str:
        return network_name(self.depth, self.tag)

    @property
    def t(self) -> float:
        """The linearized time of its training, t = 2ηE/B (docs/theory.md)."""
        return 2 * self.lr * self.epochs / self.batch_size

    @property
    def kernel(self) -> str | None:
        """The analytic NTK of its family and depth (none for "standard")."""
        return theory_kernel(self.parameterization, self.depth)

    def setting(self, key: str):
        return self.depth if key == "depths" else getattr(self, key)

    def theory_method(self, variant: str) -> str:
        return f"LIN{self.depth}{variant}{self.tag}"

    def theory_methods(self) -> list[str]:
        analytic = self.kernel is not None
        return [
            self.theory_method(v) for v in THEORY_VARIANTS if analytic or v not in ANALYTIC_VARIANTS
        ]


def network_depths(n) -> list[int]:
    """The depths of a run's networks: ``networks.vary.depths`` in a depth sweep, else
    ``networks.depths`` (``networks.epochs`` gives one entry per depth of this list)."""
    return list(n.vary.get("depths", n.depths))


def network_specs(cfg: _Config) -> list[NetSpec]:
    """The trial's networks: per depth, one per grid point of ``networks.vary`` (one in all
    outside a sweep). With ``networks.keep_t`` the epochs of each learning rate keep the base
    t = 2ηE/B (rounded to whole epochs; the record has the t trained to)."""
    n = cfg.networks
    if not n.enabled:
        return []
    depths = network_depths(n)
    axes = {k: v for k, v in n.vary.items() if k != "depths"}
    specs = []
    for depth in depths:
        base_epochs = n.epochs[depths.index(depth)] if len(n.epochs) == len(depths) else None
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values, strict=True))
            s = {"width": n.width, "lr": n.lr, "batch_size": n.batch_size, "epochs": base_epochs}
            s |= {"parameterization": n.parameterization, **point}
            if n.keep_t and "lr" in point:
                s["epochs"] = kept_t_epochs(base_epochs, n.lr, point["lr"])
            tag = sweep_tag(point | ({"depths": depth} if "depths" in n.vary else {}))
            specs.append(NetSpec(depth=depth, tag=tag, **s))
    return specs


def kept_t_epochs(epochs: int, lr: float, new_lr: float) -> int:
    """The epochs that keep t = 2ηE/B of (``lr``, ``epochs``) at ``new_lr``, to whole epochs."""
    return max(1, round(epochs * lr / new_lr))


def network_spec(cfg: _Config, name: str) -> NetSpec:
    """The spec of the network named ``name`` (``NN1``, ``NN1@w64``, ``NN2@lr=0.02``)."""
    for s in network_specs(cfg):
        if s.name == name:
            return s
    raise ValueError(f"no network {name!r} in this configuration")
