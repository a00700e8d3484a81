"""The one seeding rule: every random stream of a run is `seed_for(seed, purpose)`.

Streams of different purposes are statistically independent and a change to one (a larger probe,
another noise setting) never moves another (the data, the init). Purposes are plain names, so a new
stream never renumbers the old ones.
"""

from __future__ import annotations

import hashlib

import numpy as np


def seed_for(seed: int, purpose: str, *index: int) -> int:
    """A 63-bit seed for the stream `purpose` (and optional sub-indices, e.g. a task) of `seed`.

    `np.random.SeedSequence` over (seed, a hash of the purpose, *(index + 1)): different purposes
    or indices give unrelated seeds; the same arguments give the same seed on every machine. The
    indices enter shifted by one because SeedSequence ignores trailing zero words (`[s, t]` and
    `[s, t, 0]` give one state), which would make `seed_for(s, p)` equal `seed_for(s, p, 0)`.
    """
    if not purpose:
        raise ValueError("seed_for needs a non-empty purpose")
    tag = int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=4).digest(), "little")
    if min((int(seed), *(int(i) for i in index))) < 0:
        raise ValueError(f"seed_for takes non-negative seeds and indices, got {seed}, {index}")
    entropy = [int(seed), tag, *(int(i) + 1 for i in index)]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
