"""Portable files (docs/FORMAT.md: Portable profile): keep masks as bytes, and the runs that feed them.

A portable file has no random node: every Bernoulli mask comes in through the uint8 input `masks`
([T, floats_per_pass], 1 keep, 0 drop), or from an initializer of that name in a baked file. The
bytes are today's shared mask set with each layer's threshold applied before feeding
(`u >= rate`, the comparison the standard graph makes), so the same mask seed gives the same
samples as the standard file in shared mode, at a quarter of the bytes. T and (optionally) the
batch are fixed, as NNAPI and Core ML need; a predict of any batch and, unless baked, any number
of passes is split into runs of the file's shape (pass t of a set depends on (seed, t) alone, so
runs of passes 0..T-1, T..2T-1, ... are the set's rows; the batch is padded and the padding's
samples dropped: with shared masks no input sees another).
"""

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .format import mask_sets
from .errors import InputError

KEEP_MASKS = "keep-uint8"  # the only mask encoding so far: one byte per mask value, 1 keep, 0 drop


def keep_masks(layout: mask_sets.MaskLayout, rates, seed: int, first: int, count: int) -> np.ndarray:
    """Passes first .. first + count - 1 of the set `seed` as keep masks: uint8 [count, floats_per_pass],
    1 where the uniform draw is >= the layer's rate (float32, as the graph compares)."""
    uniform = mask_sets.draw(layout, seed, first, count)
    kept = np.empty(uniform.shape, dtype=np.uint8)
    for entry, rate in zip(layout.entries, rates):
        columns = slice(entry.offset, entry.offset + entry.size)
        kept[:, columns] = uniform[:, columns] >= np.float32(rate)
    return kept


def check_masks_feed(masks, passes: int, floats_per_pass: int) -> np.ndarray:
    """A caller's own keep masks for a portable file: uint8 [passes, floats_per_pass] of 0 and 1."""
    masks = np.asarray(masks)
    if masks.dtype != np.uint8:
        raise InputError(f"a portable file's masks are uint8 keep masks (0 or 1), got dtype {masks.dtype}")
    if masks.shape != (passes, floats_per_pass):
        raise InputError(f"a portable file's masks have shape [{passes}, {floats_per_pass}] (passes, floats per "
                         f"pass), got {list(masks.shape)}")
    if masks.size and masks.max() > 1:
        raise InputError(f"a portable file's masks hold 0 (drop) or 1 (keep), got {int(masks.max())}")
    return masks


def check_predict(info, path: str, mode: str, mask_seed: Optional[int], passes: int) -> None:
    """InputError for what a portable file cannot do: independent masks, another mask seed or more
    passes than a baked file holds."""
    portable = info.portable
    if mode != "shared":
        raise InputError(f"{path} is a portable file: its masks are fed from a mask seed (shared masks only); "
                         "run the standard file for masks='independent'")
    baked = portable.get("baked")
    if baked is not None:
        if mask_seed is not None and mask_seed != baked["mask_seed"]:
            raise InputError(f"{path} holds the baked mask set of seed {baked['mask_seed']}; it cannot use mask "
                             f"seed {mask_seed}")
        if passes > portable["passes"]:
            raise InputError(f"{path} holds {portable['passes']} baked passes; asked for {passes}")


def check_raw(info, x: Dict[str, np.ndarray], passes: int, masks) -> None:
    """One raw run of a portable file takes its T passes and its batch, and no masks if baked."""
    portable = info.portable
    if passes != portable["passes"]:
        raise InputError(f"a portable file runs its {portable['passes']} passes at once; asked for {passes}")
    batch = len(next(iter(x.values())))
    if portable.get("batch") is not None and batch != portable["batch"]:
        raise InputError(f"a portable file of batch {portable['batch']} got a batch of {batch}")
    if masks is not None and portable.get("baked") is not None:
        raise InputError("a baked portable file holds its masks; it takes none")


def mask_seed_of(info, default: int) -> int:
    baked = info.portable.get("baked")
    return baked["mask_seed"] if baked is not None else default


def feeds(info, x: Dict[str, np.ndarray], stochastic: bool, masks: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """The feed of one run: the model's inputs, `stochastic` and (unless baked) the keep masks."""
    feed = {**x, "stochastic": np.array(bool(stochastic))}
    if info.portable.get("baked") is None:
        feed[mask_sets.MASKS] = masks
    return feed


def run_samples(info, run: Callable, x: Dict[str, np.ndarray], passes: int, stochastic: bool, seed: int,
                names: List[str], progress=None, rows_per_run: Optional[int] = None) -> Dict[str, np.ndarray]:
    """{samples output: [passes, batch, ...]} from runs of the file's shape. run(x, masks) is one
    onnxruntime run of the file's T passes and batch. A file of any batch takes rows_per_run inputs
    a run (MCSession's memory bound; default: the whole batch)."""
    portable, layout = info.portable, info.mask_layout
    file_passes, file_batch = portable["passes"], portable.get("batch")
    rates = [layer.rate for layer in info.stochastic_layers]
    batch = len(next(iter(x.values())))
    step = file_batch or min(batch, rows_per_run or batch)
    wanted = passes if stochastic else 1
    pass_starts = list(range(0, wanted, file_passes))
    row_starts = list(range(0, batch, step))
    total, done = len(pass_starts) * len(row_starts), 0
    by_pass: List[Dict[str, List[np.ndarray]]] = []
    for first in pass_starts:
        if portable.get("baked") is not None:
            masks = None
        elif stochastic:
            masks = keep_masks(layout, rates, seed, first, file_passes)
        else:
            masks = np.ones((file_passes, layout.floats_per_pass), dtype=np.uint8)  # ignored by the graph
        pieces: Dict[str, List[np.ndarray]] = {name: [] for name in names}
        for start in row_starts:
            rows, size = _padded(x, start, step)
            out = run(rows, masks)
            for name in names:
                pieces[name].append(out[name][:, :size])
            done += 1
            if progress:
                progress(done, total)
        by_pass.append({name: np.concatenate(parts, axis=1) for name, parts in pieces.items()})
    return {name: np.concatenate([piece[name] for piece in by_pass], axis=0)[:wanted] for name in names}


def self_check(checks, info, run: Callable, x: Dict[str, np.ndarray], seed: int, names: List[str]) -> None:
    """MCSession.self_check for a portable file: no random node (checked on load), two mask seeds
    give different samples (not for a baked file: one set), the passes of a run differ, and the
    deterministic pass repeats. run(x, masks, stochastic): one run of the file."""
    from .randomness_checks import side_by_side

    def samples(stochastic: bool, mask_seed: int) -> np.ndarray:
        found = run_samples(info, lambda rows, kept: run(rows, kept, stochastic), x,
                            info.portable["passes"], stochastic, mask_seed, names)
        return side_by_side(found, names)

    checks.check("no random node", True, "masks fed as uint8 keep masks" + (
        f", baked (mask seed {info.portable['baked']['mask_seed']})" if info.portable.get("baked") else ""), "")
    first = samples(True, seed)
    if info.portable.get("baked") is None:
        checks.check("mask seeds differ", not np.array_equal(first, samples(True, (seed + 1) % mask_sets.MAX_SEED)),
                     "two mask seeds give different samples", "two mask seeds gave identical samples")
    checks.check("passes differ", float(np.max(first.max(0) - first.min(0))) > 0, "passes within a run differ",
                 "all passes of a run are identical")
    checks.check("deterministic pass repeats", np.array_equal(samples(False, seed), samples(False, seed)),
                 "dropout off gives the same output every time", "dropout off still varies between runs")


def _padded(x: Dict[str, np.ndarray], start: int, size: int) -> Tuple[Dict[str, np.ndarray], int]:
    """Rows start .. start + size of every input, the last chunk padded with copies of its first
    row to `size` rows; (the rows, how many are real)."""
    rows = {name: value[start:start + size] for name, value in x.items()}
    real = len(next(iter(rows.values())))
    if real < size:
        rows = {name: np.concatenate([value, np.repeat(value[:1], size - real, axis=0)]) for name, value in rows.items()}
    return rows, real


def masks_for_run(info, masks: Optional[np.ndarray], mask_seed: int) -> Optional[np.ndarray]:
    """A portable file's keep masks for one run: the caller's, checked, or those of the session's
    mask seed (None for a baked file: stored in the file)."""
    portable, layout = info.portable, info.mask_layout
    if portable["baked"] is not None:
        return None
    if masks is None:
        return keep_masks(layout, [layer.rate for layer in info.stochastic_layers], mask_seed, 0, portable["passes"])
    return check_masks_feed(masks, portable["passes"], layout.floats_per_pass)
