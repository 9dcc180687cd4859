"""How a trial's rows are split (docs/formulas.md): the test split and Keras' validation split.

Plain arithmetic on sizes, a leaf: the config checks a split is possible, the data simulation
and the training apply it.
"""

from __future__ import annotations

import math


def test_size(n_obs: int, test_fraction: float) -> int:
    """docs/formulas.md: ceil(test_fraction · n_obs), robust to float noise (0.33·1000 → 330)."""
    return math.ceil(round(test_fraction * n_obs, 9))


test_size.__test__ = False  # not a pytest test despite its name


def keras_split(n_train: int, validation_split: float = 0.3) -> int:
    """Number of leading rows Keras fits with ``validation_split``, the rest being validation.

    Keras (``train_validation_split`` in keras/tf.keras; ``_split`` in older Keras) computes
    ``int(math.floor(n * (1.0 - validation_split)))`` in floating point, so 670 rows give 468 (not
    469: 670 · 0.7 = 468.99999999999994). Like Keras, a split leaving either part empty is an
    error; ``validation_split=0`` means no validation rows.
    """
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    n_train = int(n_train)
    if validation_split == 0.0:
        return n_train
    split_at = int(math.floor(n_train * (1.0 - validation_split)))
    if split_at == 0 or split_at == n_train:
        raise ValueError(
            f"{n_train} training rows are not enough to split with "
            f"validation_split={validation_split}: the fit or validation part would be empty"
        )
    return split_at
