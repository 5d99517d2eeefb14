"""Fresh seeds for the random nodes, written straight into the serialized model.

onnxruntime seeds each RandomUniformLike / RandomNormalLike node once, from its float `seed`
attribute, when the session is created; without a rewrite every session of one file would replay
the same dropout masks. The rewrite works on the bytes, without the onnx package: protobuf writes
the attribute's float as 4 little-endian bytes (field 2, fixed 32 bits), which runtime/format/onnx_file.py
finds by walking the graph's nodes; they are swapped in place and the file length does not change.
Only the graph's random nodes are touched, never bytes elsewhere that happen to look like a seed.
"""

from typing import List, Optional, Tuple

import numpy as np

from ..errors import ModelFileError
from .onnx_file import ModelFile, read_model

# onnxruntime casts the float to uint32 and seeds a std::minstd_rand0 generator with it (libstdc++
# and libc++; MSVC's default engine is mt19937). minstd walks one cycle through every state
# 1..2**31-2: state x is followed by 16807 x mod (2**31 - 1). A seed is a starting point on that
# cycle, and two seeds a distance d apart give the same stream shifted by d draws. Two streams that
# draw at the same pace, such as one layer's node in each of MCSession's worker sessions, keep
# their distance: started too close (random seeds, 50M draws per call per worker for the shipped
# CNN at T=50, batch 32: about 5% of pairs), they would repeat each other in every call. So the
# seeds are spread around the cycle: stream j of n starts in the first half of the j-th of n equal
# arcs. Streams of different layers draw at different paces and still meet now and then, as with
# any seeds. The spot within the half arc is random, because exactly even spacing makes the
# seeds multiples of each other by roots of unity: two seeds half the cycle apart give the
# streams x and -x, uniforms u and 1 - u.
MINSTD_MODULUS = 2**31 - 1
MINSTD_MULTIPLIER = 16807


def _float32_exact(value: int) -> bool:
    return float(np.float32(value)) == value


def find_seeds(model_bytes: bytes, parsed: Optional[ModelFile] = None) -> List[Tuple[int, float]]:
    """(offset of the float, value) of every random node's `seed` attribute, in file order."""
    parsed = parsed or read_model(model_bytes)
    return [(node.seed_offset, float(np.float32(node.seed))) for node in parsed.random_nodes
            if node.seed_offset is not None]


def fresh_seeds(count: int, seed: Optional[int] = None) -> List[float]:
    """`count` seeds spread around minstd's cycle, from SeedSequence(seed) (None: OS entropy).

    Each stream can draw (2**31 - 2) / (2 count) numbers before it reaches the next one's start.
    The seeds are float32-exact integers, so the float attribute casts back to the state chosen:
    the first exact state at or after the spot drawn, a few dozen steps on at most.
    """
    if count == 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    arc = (MINSTD_MODULUS - 1) // count
    start = int(rng.integers(MINSTD_MODULUS - 1))
    drawn: List[float] = []
    for j in range(count):
        position = (start + j * arc + int(rng.integers(arc // 2))) % (MINSTD_MODULUS - 1)
        state = pow(MINSTD_MULTIPLIER, position, MINSTD_MODULUS)
        while not _float32_exact(state):
            state = state * MINSTD_MULTIPLIER % MINSTD_MODULUS
        drawn.append(float(state))
    return drawn


def stream_seeds(count: int, seed: Optional[int], stream: int, streams: int) -> List[float]:
    """Seeds for session `stream` of `streams` that share one seed: each session takes its own
    `count` of the count * streams seeds spread around the cycle."""
    return fresh_seeds(count * streams, seed)[stream * count:(stream + 1) * count]


def rewrite_seeds(model_bytes: bytes, seed: Optional[int], stream: int = 0, streams: int = 1,
                  parsed: Optional[ModelFile] = None) -> Tuple[bytes, List[float]]:
    """(the model with fresh seeds, the seeds it had, in file order); see stream_seeds."""
    found = find_seeds(model_bytes, parsed)
    rewritten = bytearray(model_bytes)
    for (offset, _), value in zip(found, stream_seeds(len(found), seed, stream, streams)):
        rewritten[offset:offset + 4] = np.float32(value).tobytes()
    return bytes(rewritten), [value for _, value in found]


def check_seeds(parsed: ModelFile, layers, path: str) -> None:
    """The graph's random nodes must be the ones the metadata lists, each with its listed float
    seed: a node the runtime cannot reseed would replay the same masks in every session."""
    unseeded = [node.name for node in parsed.random_nodes if node.seed_offset is None]
    if unseeded:
        raise ModelFileError(f"{path}: random node {unseeded[0]!r} has no float seed attribute; "
                             "export the model again")
    names = sorted(node.name for node in parsed.random_nodes)
    listed_names = sorted(layer.random_node for layer in layers)
    if names != listed_names:
        raise ModelFileError(f"{path}: the graph's random nodes ({len(names)}) are not the "
                             f"{len(listed_names)} the metadata lists; export the model again")
    old = [float(np.float32(node.seed)) for node in parsed.random_nodes]
    listed = [layer.seed for layer in layers]
    if sorted(old) != sorted(float(np.float32(value)) for value in listed):
        raise ModelFileError(f"{path}: the random nodes' seeds do not match the metadata's; "
                             "export the model again")
