"""The NTK families as per-layer constants of one recursion (SPEC §2).

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


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
    """A parameterization: its name prefixes, paper parameter values and source."""

    name: str  # prefix of the NTK name, "NTKB" in "NTKB2"
    nngp_name: str  # prefix of its NNGP, "GP" in "GP2"
    defaults: tuple[tuple[str, float], ...]  # override name → paper value
    source: str

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.defaults)


NTKB = Family(
    "NTKB",
    "GP",
    (("sigma_w0", 1.0), ("sigma_b0", 1.0), ("sigma_w", 1.0), ("sigma_b", 1.0), ("c", 2.0)),
    "Liu et al. 2025 (arXiv 2501.10929), section 3.1 and appendix 6.4-6.5, eqs. (6) and (8)",
)
NTKJ = Family(
    "NTKJ",
    "GPJ",
    (("sigma_w", 1.0), ("sigma_b", 1.0)),
    "Jacot et al. 2018, NTK parameterization with bias (neural-tangents stax.Dense 'ntk' + Relu)",
)
NTKA = Family(
    "NTKA",
    "GPA",
    (("c_sigma", 2.0),),
    "Arora et al. 2019, 'On exact computation with an infinitely wide neural net', no bias",
)
FAMILIES = {f.name: f for f in (NTKB, NTKJ, NTKA)}

# The published NTKJ exists only at the depths the paper's code computed (SPEC §2, item 4).
PUBLISHED_NTKJ_DEPTHS = (1, 2)


def layers(
    family: Family, params: Mapping[str, float], depth: int, d: int, published: bool = False
) -> tuple[Layer, ...]:
    """The depth + 1 layers of ``family`` with resolved ``params`` for inputs of dimension ``d``."""
    p = params
    if family is NTKB:
        # First layer raw: W ~ N(0, σ_w0²/d), b ~ N(0, σ_b0²), so K⁰ = σ_w0²/d ⟨x,x'⟩ + σ_b0²
        # and the gradients give Θ⁰ = ⟨x,x'⟩ + 1. Later layers b + √(c/n) W relu(z), W ~ N(0, σ_w²).
        first = Layer(p["sigma_w0"] ** 2 / d, p["sigma_b0"] ** 2, 1.0, 1.0, 0.0)
        w = p["c"] * p["sigma_w"] ** 2
        hidden = [Layer(w, p["sigma_b"] ** 2, p["c"], 1.0, w)] * depth
    elif family is NTKJ:
        # z = σ_w/√n W h + σ_b b with N(0, 1) parameters: Θ⁰ = K⁰, Θ^l = K^l + σ_w² Ė Θ^{l-1}.
        w, b = p["sigma_w"] ** 2, p["sigma_b"] ** 2
        first = Layer(w / d, b, w / d, b, 0.0)
        hidden = [Layer(w, b, w, b, w)] * depth
        if published:
            if depth not in PUBLISHED_NTKJ_DEPTHS:
                raise ValueError(
                    f"published NTKJ/GPJ exist only for depths {PUBLISHED_NTKJ_DEPTHS}, got {depth}"
                )
            if depth == 2:
                # The released code's NTKJ2 feeds layer 2 the NTKB-family K¹ = σ_b² + c₁ σ_w² E(K⁰)
                # with c₁ = 2 instead of the NTKJ K¹ = σ_b² + σ_w² E(K⁰); Θ¹ stays NTKJ's.
                hidden[0] = replace(hidden[0], cov_weight=2.0 * w)
    elif family is NTKA:
        # Arora et al.: no bias, no 1/d; z = √(c_σ/n) W relu(z) with N(0, 1) weights.
        cs = p["c_sigma"]
        first = Layer(1.0, 0.0, 1.0, 0.0, 0.0)
        hidden = [Layer(cs, 0.0, cs, 0.0, cs)] * depth
    else:
        raise ValueError(f"unknown family {family!r}; valid: {sorted(FAMILIES)}")
    return (first, *hidden)
