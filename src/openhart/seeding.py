"""Seeds derived from keys, so that a random draw depends on *what* it is for, not on the order
in which a process happens to make it.

Training draws the randomness of each example (its crop, condition dropout, noise...) from a
generator keyed by (run seed, step or epoch, example index, purpose). The same example then gets
the same randomness whether it is trained by 1 process or by N, and after a resume.
"""

from __future__ import annotations

import hashlib
import secrets

import torch

# Seeds of generations: 0 to 2^63 - 1 (torch.Generator takes 64 bits; negative seeds would wrap
# around onto large ones).
MAX_SEED = 2**63 - 1


# Fresh seeds are drawn below 2^53: a seed shown in the web page or stored in JSON metadata stays
# exact there (JavaScript numbers are doubles), and seed + chunk index stays far below MAX_SEED.
FRESH_SEED_BOUND = 2**53


def new_seed() -> int:
    """A fresh random seed (from the OS's entropy, not torch's RNG): the only source of seeds
    that the user did not give, in the CLI, the pipeline and the web UI."""
    return secrets.randbelow(FRESH_SEED_BOUND)


def check_seed(seed) -> int:
    """`seed` as an int, or a ValueError naming the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer between 0 and {MAX_SEED} (2^63 - 1), got {seed!r}")
    return seed


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a stable function of `parts` (ints and strings)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def keyed_generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on `device` seeded with `derive_seed(*parts)`."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))
