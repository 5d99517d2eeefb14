"""Fresh seeds for the random nodes, written straight into the serialized model.

onnxruntime seeds each RandomUniformLike / RandomNormalLike node once, from its float `seed`
attribute, when the session is created; without a rewrite every session of one file would replay
the same dropout masks. The rewrite works on the bytes, without the onnx package: protobuf writes
an AttributeProto {name: "seed", f: <float>} as

    0A 04 73 65 65 64   field 1 (name), length 4, "seed"
    15 <float32 LE>     field 2 (f), fixed 32 bits

so the 4 bytes after each marker are swapped in place and the file length does not change.
"""

from typing import List, Optional, Tuple

import numpy as np

from runtime.errors import ModelFileError

SEED_MARKER = b"\x0a\x04seed\x15"

# onnxruntime casts the float to uint32 and seeds a minstd generator (modulus 2**31 - 1) with it.
# Small or nearby seeds give correlated streams, so seeds are drawn large and spread out, and
# exactly representable as float32 so the cast gives back the drawn integer.
LOWEST_SEED = 2**24
HIGHEST_SEED = 2**31 - 2


def find_seeds(model_bytes: bytes) -> List[Tuple[int, float]]:
    """(offset of the float, value) of every float `seed` attribute, in file order."""
    found = []
    start = model_bytes.find(SEED_MARKER)
    while start != -1:
        offset = start + len(SEED_MARKER)
        found.append((offset, float(np.frombuffer(model_bytes, "<f4", 1, offset)[0])))
        start = model_bytes.find(SEED_MARKER, offset)
    return found


def fresh_seeds(count: int, seed: Optional[int] = None) -> List[float]:
    """`count` distinct float32-exact integers in [LOWEST_SEED, HIGHEST_SEED] from SeedSequence(seed);
    seed=None draws fresh OS entropy."""
    words = np.random.default_rng(np.random.SeedSequence(seed))
    drawn: List[float] = []
    while len(drawn) < count:
        word = int(words.integers(2**32, dtype=np.uint32))
        # float32 keeps 24 bits, so rounding lands on a representable integer; the span stops
        # 128 (float32's step there) below 2**31, so rounding up never leaves the range.
        value = float(np.float32(LOWEST_SEED + word % (HIGHEST_SEED - 127 - LOWEST_SEED)))
        if value not in drawn:  # a collision is about one in a million for ten nodes
            drawn.append(value)
    return drawn


def rewrite_seeds(model_bytes: bytes, seed: Optional[int]) -> Tuple[bytes, List[float]]:
    """(the model with fresh seeds, the seeds it had, in file order)."""
    found = find_seeds(model_bytes)
    rewritten = bytearray(model_bytes)
    for (offset, _), value in zip(found, fresh_seeds(len(found), seed)):
        rewritten[offset:offset + 4] = np.float32(value).tobytes()
    return bytes(rewritten), [value for _, value in found]


def check_seeds(old: List[float], listed: List[float], path: str) -> None:
    """The seeds found must be the ones the metadata lists for its random nodes; anything else
    means a "seed" pattern the rewrite should not have touched, or a hand-edited file."""
    if sorted(old) != sorted(float(np.float32(value)) for value in listed):
        raise ModelFileError(
            f"{path}: the random nodes' seeds {sorted(old)} do not match the metadata's "
            f"{sorted(listed)}; export the model again")
