"""One table of parameterizations (ntkflow.parameterizations): the networks, the kernels of their
families, the names, the config and the verdict all read it, and the kernel layer constants that
follow from a network's scaling are the papers' constants."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ntkflow.config import ConfigError, NetworksConfig, validate
from ntkflow.kernels import FAMILIES, Layer, layers
from ntkflow.kernels.families import dense_layer
from ntkflow.names import depth_series, family_kernels, network_name, same_family, theory_kernel
from ntkflow.nets import HYPER_DEFAULTS, build_network
from ntkflow.parameterizations import NETWORK_FAMILIES, PARAMETERIZATION_NAMES, PARAMETERIZATIONS
from ntkflow.seeds import STREAM_NETS, net_seed, ntk_subsample_seed, trial_seed

WITH_FAMILY = [p for p in PARAMETERIZATIONS.values() if p.family]
DEPTHS = (1, 2, 5)
DIMS = (1, 3, 15, 49, 784)


def _hypers(name: str) -> list[dict[str, float]]:
    """The paper's values and a grid of others (zeros included: a bias may be switched off)."""
    if name == "ntkj":
        grid = itertools.product((0.3, 1.0, 1.7), (0.0, 0.4, 1.1))
        return [HYPER_DEFAULTS[name]] + [dict(sigma_w=w, sigma_b=b) for w, b in grid]
    grid = itertools.product((0.3, 1.3), (0.0, 0.7), (0.9, 2.1), (0.0, 1.1), (0.5, 2.0, 7.3))
    keys = ("sigma_w0", "sigma_b0", "sigma_w", "sigma_b", "c")
    return [HYPER_DEFAULTS[name]] + [dict(zip(keys, v, strict=True)) for v in grid]


def _papers_layers(family: str, p: dict, depth: int, d: int, published: bool) -> list[Layer]:
    """The constants as the papers write them (Liu et al. 2025, eqs. (6), (8); Jacot et al.)."""
    if family == "NTKB":
        # K⁰ = σ_w0²/d ⟨x,x'⟩ + σ_b0², Θ⁰ = ⟨x,x'⟩ + 1; later layers b + √(c/n) W relu(z).
        w = p["c"] * p["sigma_w"] ** 2
        first = Layer(p["sigma_w0"] ** 2 / d, p["sigma_b0"] ** 2, 1.0, 1.0, 0.0)
        return [first] + [Layer(w, p["sigma_b"] ** 2, p["c"], 1.0, w)] * depth
    w, b = p["sigma_w"] ** 2, p["sigma_b"] ** 2  # Θ⁰ = K⁰, Θ^l = K^l + σ_w² Ė Θ^{l-1}
    lays = [Layer(w / d, b, w / d, b, 0.0)] + [Layer(w, b, w, b, w)] * depth
    if published and depth == 2:  # the released code's NTKJ2 feeds layer 2 an NTKB-style K¹
        lays[1] = Layer(2.0 * w, b, w, b, w)
    return lays


@pytest.mark.parametrize("network", WITH_FAMILY, ids=lambda p: p.name)
def test_family_layers_are_the_papers_constants_bit_for_bit(network):
    """Derived from the network's scaling, the constants are the very floats of the papers'
    formulas: Grams (and so stored keys and results) are what they were when written out."""
    family = FAMILIES[network.family]
    assert family.defaults == network.defaults
    for hyper, depth, d in itertools.product(_hypers(network.name), DEPTHS, DIMS):
        for published in (False, True) if family.name == "NTKJ" and depth <= 2 else (False,):
            got = layers(family, hyper, depth, d, published)
            assert list(got) == _papers_layers(family.name, hyper, depth, d, published), (
                hyper,
                depth,
                d,
                published,
            )


@pytest.mark.parametrize("network", WITH_FAMILY, ids=lambda p: p.name)
@pytest.mark.parametrize("depth", [1, 3])
def test_family_layers_follow_from_a_built_networks_layers(network, depth):
    """From the multipliers and stds of a network that ``build_network`` builds, with n the fan-in
    and M the mean product of a layer's inputs: cov_weight = n·m_w²·s_w², cov_bias = m_b²·s_b²,
    ntk_weight = n·m_w², ntk_bias = m_b², ntk_chain = cov_weight (the input layer's M = ⟨x, x'⟩
    is a sum of d products, not their mean: n·M/d there, and no chain)."""
    d, width = 7, 33
    for hyper in _hypers(network.name)[:4]:
        net = build_network(d, depth, width, network.name, seed=0, **hyper)
        expected = layers(FAMILIES[network.family], hyper, depth, d)
        for l, (m, lay) in enumerate(zip(net.layers, expected, strict=True)):
            scale = m.in_features / d if l == 0 else m.in_features  # n, over d for the sum
            derived = Layer(
                cov_weight=scale * m.weight_mult**2 * m.weight_std**2,
                cov_bias=m.bias_mult**2 * m.bias_std**2,
                ntk_weight=scale * m.weight_mult**2,
                ntk_bias=m.bias_mult**2,
                ntk_chain=0.0 if l == 0 else m.in_features * m.weight_mult**2 * m.weight_std**2,
            )
            for field in vars(lay):
                a, b = getattr(derived, field), getattr(lay, field)
                assert math.isclose(a, b, rel_tol=1e-13, abs_tol=1e-300), (l, field, a, b)


def test_standard_has_no_family_because_its_ntk_grows_with_the_width():
    standard = PARAMETERIZATIONS["standard"]
    assert standard.family is None and theory_kernel("standard", 2) is None
    with pytest.raises(ValueError, match="no infinite-width limit"):
        dense_layer(standard.later, {}, 15, first=False)  # Θ's weight term is n·m_w² = width


def test_names_config_and_verdict_read_the_table():
    assert PARAMETERIZATION_NAMES == ("ntkj", "ntkb", "standard")
    assert NETWORK_FAMILIES == ("NTKJ", "NTKB")
    assert family_kernels(2) == ["NTKJ2", "NTKB2"]
    assert [theory_kernel(p, 3) for p in PARAMETERIZATION_NAMES] == ["NTKJ3", "NTKB3", None]
    assert HYPER_DEFAULTS == {p.name: dict(p.defaults) for p in PARAMETERIZATIONS.values()}
    for name in PARAMETERIZATION_NAMES:
        assert NetworksConfig(parameterization=name).parameterization == name
    with pytest.raises(ConfigError) as e:
        validate({"networks": {"parameterization": "mup"}})
    assert "'ntkj', 'ntkb' or 'standard'" in str(e.value)


def test_seed_streams_keep_their_spawn_keys():
    """The streams moved to ntkflow.seeds; every seed of trial k is the same SeedSequence."""
    cfg = validate({"seed": 123})
    for k, depth in itertools.product((0, 3), (1, 2)):
        s = net_seed(cfg, k, depth)
        assert (s.entropy, s.spawn_key) == (123, (k, STREAM_NETS, depth))
        ref = trial_seed(123, k).spawn(STREAM_NETS + 1)[STREAM_NETS].spawn(depth + 1)[depth]
        assert np.array_equal(s.generate_state(4), ref.generate_state(4))
    assert ntk_subsample_seed(cfg, 2).spawn_key == (2, STREAM_NETS, 0)


def test_method_name_helpers():
    assert depth_series("NTKB12") == ("NTKB", 12) and depth_series("NN1") == ("NN", 1)
    assert depth_series("LIN1-emp") is None and depth_series("NN1@w64") is None
    assert same_family("NTKB1", "NTKB2") and same_family("NTKB9", "NTKB10")
    assert not same_family("NTKB1", "NTKJ2") and not same_family("NN1", "NN1")
    assert not same_family("NN1@w64", "NN2@w64")
    assert network_name(2, "@w8") == "NN2@w8" and network_name(None, "@lr=0.1") == "NN@lr=0.1"
