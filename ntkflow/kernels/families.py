"""The NTK families as per-layer constants of one recursion (docs/formulas.md).

Every family is the same layer recursion with different constants (the neural-tangents view: a
dense layer maps the kernel pair (K, Θ) of its inputs to that of its outputs). A network with L
hidden ReLU layers has L + 1 dense layers: the input layer, then L layers each after a ReLU (the
last of them is the read-out). With M the mean product of a layer's inputs and Ṁ its derivative,

    input layer:  M = ⟨x, x'⟩,  Ṁ = 0
    later layers: M = E(K),     Ṁ = Ė(K)       (K: the previous layer's pre-activation covariance)

    K_next = cov_bias + cov_weight · M
    Θ_next = ntk_bias + ntk_weight · M + ntk_chain · Ṁ · Θ

ntk_bias + ntk_weight · M is the gradient inner product of the layer's own weights and bias;
ntk_chain · Ṁ · Θ carries the earlier layers' gradients through the layer (chain rule), so ntk_chain
equals cov_weight except in the published NTKJ2 hybrid.

The constants of NTKJ and NTKB are derived from their networks' scaling
(:mod:`ntkflow.parameterizations`, see :func:`dense_layer`); only NTKA (a kernel without a network
here) and the published NTKJ2 hybrid are written out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ntkflow.parameterizations import PARAMETERIZATIONS, LayerScaling, Parameterization, Scale


@dataclass(frozen=True)
class Layer:
    """Constants of one dense layer in kernel form (see the module docstring)."""

    cov_weight: float
    cov_bias: float
    ntk_weight: float
    ntk_bias: float
    ntk_chain: float


@dataclass(frozen=True)
class Family:
    """A kernel family: its name prefixes, paper parameter values and source."""

    name: str  # prefix of the NTK name, "NTKB" in "NTKB2"
    nngp_name: str  # prefix of its NNGP, "GP" in "GP2"
    defaults: tuple[tuple[str, float], ...]  # override name → paper value
    source: str

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.defaults)


# the network whose infinite-width limit each family is (NTKA has none here)
NETWORK_OF: dict[str, Parameterization] = {
    p.family: p for p in PARAMETERIZATIONS.values() if p.family is not None
}

NTKB = Family(
    "NTKB",
    "GP",
    NETWORK_OF["NTKB"].defaults,
    "Liu et al. 2025 (arXiv 2501.10929), section 3.1 and appendix 6.4-6.5, eqs. (6) and (8)",
)
NTKJ = Family(
    "NTKJ",
    "GPJ",
    NETWORK_OF["NTKJ"].defaults,
    "Jacot et al. 2018, NTK parameterization with bias (neural-tangents stax.Dense 'ntk' + Relu)",
)
NTKA = Family(
    "NTKA",
    "GPA",
    (("c_sigma", 2.0),),
    "Arora et al. 2019, 'On exact computation with an infinitely wide neural net', no bias",
)
FAMILIES = {f.name: f for f in (NTKB, NTKJ, NTKA)}

# The published NTKJ exists only at the depths the paper's code computed (docs/formulas.md, item 4).
PUBLISHED_NTKJ_DEPTHS = (1, 2)


def _square(factors: Sequence[Scale], params: Mapping[str, float]) -> tuple[float, int]:
    """Π factor² of a term without its fan-in, and the power of 1/n that it has."""
    value, power = 1.0, 0
    for s in factors:
        value *= s.square(params)
        power += s.per_fan_in
    return value, power


def dense_layer(s: LayerScaling, params: Mapping[str, float], d: int, first: bool) -> Layer:
    """The kernel constants of the dense layer z = m_w·W h + m_b·b of a network, with
    W ~ N(0, s_w²), b ~ N(0, s_b²) and n inputs (Jacot et al. 2018, Theorem 1):

        K = m_b² s_b² + m_w² s_w² Σ_j h_j h'_j,     Θ_own = m_b² + m_w² Σ_j h_j h'_j.

    After a ReLU, Σ_j h_j h'_j = n·M (M = E(K), the mean of n products), so cov_weight =
    n·m_w²·s_w², cov_bias = m_b²·s_b², ntk_weight = n·m_w², ntk_bias = m_b², ntk_chain =
    cov_weight, and n is the width: each term's 1/n must cancel that n (or be absent from a
    bias term), else the layer has no infinite-width limit. On the input layer
    Σ_j x_j x'_j = ⟨x, x'⟩ = M itself and n = d: a 1/√d factor stays, as 1/d (no chain term).
    """

    def term(factors: Sequence[Scale], sums_inputs: bool) -> float:
        value, power = _square(factors, params)
        if first:
            return value / d**power if power else value
        if power != sums_inputs:
            raise ValueError(
                f"no infinite-width limit: a kernel term scales like width^{sums_inputs - power}"
            )
        return value

    cov_weight = term((s.weight_mult, s.weight_init), True)
    return Layer(
        cov_weight=cov_weight,
        cov_bias=term((s.bias_mult, s.bias_init), False),
        ntk_weight=term((s.weight_mult,), True),
        ntk_bias=term((s.bias_mult,), False),
        ntk_chain=0.0 if first else cov_weight,
    )


def network_layers(
    network: Parameterization, params: Mapping[str, float], depth: int, d: int
) -> tuple[Layer, ...]:
    """The depth + 1 kernel layers of the infinite-width limit of a ``network``."""
    if network.init != "normal":
        raise ValueError(f"{network.name!r}: kernels are derived for Gaussian initialisation")
    first = dense_layer(network.first, params, d, first=True)
    return (first, *[dense_layer(network.later, params, d, first=False)] * depth)


def layers(
    family: Family, params: Mapping[str, float], depth: int, d: int, published: bool = False
) -> tuple[Layer, ...]:
    """The depth + 1 layers of ``family`` with resolved ``params`` for inputs of dimension ``d``."""
    if family.name in NETWORK_OF:
        lays = list(network_layers(NETWORK_OF[family.name], params, depth, d))
        if family is NTKJ and published:
            if depth not in PUBLISHED_NTKJ_DEPTHS:
                raise ValueError(
                    f"published NTKJ/GPJ exist only for depths {PUBLISHED_NTKJ_DEPTHS}, got {depth}"
                )
            if depth == 2:
                # The released code's NTKJ2 feeds layer 2 the NTKB-family K¹ = σ_b² + c₁ σ_w² E(K⁰)
                # with c₁ = 2 instead of the NTKJ K¹ = σ_b² + σ_w² E(K⁰); Θ¹ stays NTKJ's.
                lays[1] = replace(lays[1], cov_weight=2.0 * lays[1].cov_weight)
        return tuple(lays)
    if family is NTKA:
        # Arora et al.: no bias, no 1/d; z = √(c_σ/n) W relu(z) with N(0, 1) weights.
        cs = params["c_sigma"]
        return (Layer(1.0, 0.0, 1.0, 0.0, 0.0), *[Layer(cs, 0.0, cs, 0.0, cs)] * depth)
    raise ValueError(f"unknown family {family!r}; valid: {sorted(FAMILIES)}")
