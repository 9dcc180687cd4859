"""Seed streams: every random draw of a trial derives from one ``SeedSequence`` here.

Trial k's seed is ``SeedSequence(seed, spawn_key=(k,))`` (:func:`trial_seed`), which equals
``SeedSequence(seed).spawn(n_trials)[k]`` without depending on ``n_trials`` or on the order in
which trials are scheduled. Its children are fixed streams:

    0 inputs x · 1 targets y · 2 train/test split   (ntkflow.data)
    3 networks, itself spawned into slots: slot L ≥ 1 is the depth-L network (:func:`net_seed`),
      slot 0 the fixed subsample of fit points of the kernel-drift diagnostics (docs/theory.md).

A network's seed gives PyTorch generators (:func:`torch_generator`) for two purposes:
initialisation (ntkflow.nets) and batch shuffling (ntkflow.train).

A leaf: numpy only (torch is imported when a generator is made), so that names, data and the
networks can all read the streams from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

STREAM_X, STREAM_Y, STREAM_SPLIT, STREAM_NETS = range(4)  # children of a trial's seed
STREAM_INIT, STREAM_SHUFFLE = 0, 1  # torch generators of a network's seed

SeedLike = int | np.random.SeedSequence


class _Seeded(Protocol):  # a Config: only its seed matters here
    seed: int


def trial_seed(seed: int, k: int) -> np.random.SeedSequence:
    """Seed sequence of trial ``k``, equal to ``SeedSequence(seed).spawn(n)[k]`` for any n > k."""
    return np.random.SeedSequence(seed, spawn_key=(k,))


def stream(seed: int, k: int, which: int) -> np.random.SeedSequence:
    """Child ``which`` (STREAM_X, …) of trial ``k``'s seed."""
    return trial_seed(seed, k).spawn(STREAM_NETS + 1)[which]


def net_seed(cfg: _Seeded, k: int, depth: int) -> np.random.SeedSequence:
    """Initialisation and batch order of trial k's depth-L network (independent per depth)."""
    # child ``depth`` of the stream does not depend on how many are spawned
    return stream(cfg.seed, k, STREAM_NETS).spawn(depth + 1)[depth]


def ntk_subsample_seed(cfg: _Seeded, k: int) -> np.random.SeedSequence:
    """Seed of the trial's fixed drift subsample: slot 0 of the networks' streams (depths ≥ 1)."""
    return net_seed(cfg, k, 0)


def torch_generator(seed: SeedLike, stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for one purpose (``stream``: STREAM_INIT, STREAM_SHUFFLE).

    ``seed`` is an int or a ``numpy.random.SeedSequence`` (a network's seed). Different streams
    of one seed are independent, and none of them coincides with the seed's ``spawn()`` children.
    """
    import torch

    if isinstance(seed, np.random.SeedSequence):
        ss = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        ss = np.random.SeedSequence(int(seed))
    else:
        raise TypeError(f"seed must be an int or numpy SeedSequence, got {type(seed).__name__}")
    word = ss.generate_state(stream + 1, dtype=np.uint64)[stream]
    return torch.Generator(device="cpu").manual_seed(int(word))
