"""Analytic kernels (docs/formulas.md): NTKB, NTKJ, NTKA and their NNGPs at any depth, and the
Laplacian K1.

    from ntkflow.kernels import kernel
    k = kernel("NTKB2", formulas="exact", **overrides)
    K = k(x1, x2)       # float64 Gram of the inputs' namespace (NumPy or CuPy); x2=None: x2 = x1
    k.nngp(x1, x2)      # the family's NNGP at the same depth
    k.diag(x)           # K(x_i, x_i), cheap

One layer recursion (:mod:`.recursion`) over per-layer constants (:mod:`.families`) and one ReLU
expectation step (:mod:`.relu`) in two variants, ``exact`` and ``published`` (the paper's code).
"""

from ntkflow.kernels.families import FAMILIES, Family, Layer, layers
from ntkflow.kernels.registry import (
    KERNEL_NAMES_HELP,
    Kernel,
    KernelName,
    LaplacianKernel,
    ReluKernel,
    kernel,
    parse_kernel_name,
)
from ntkflow.kernels.relu import FORMULAS, relu_expectations

__all__ = [
    "FAMILIES",
    "FORMULAS",
    "KERNEL_NAMES_HELP",
    "Family",
    "Kernel",
    "KernelName",
    "LaplacianKernel",
    "Layer",
    "ReluKernel",
    "kernel",
    "layers",
    "parse_kernel_name",
    "relu_expectations",
]
