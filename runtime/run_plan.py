"""A predict's Monte Carlo choices, `passes`, `masks` and `mask_seed`, checked and defaulted in
one place (MCSession.resolve): infer, score, evaluate and acquire all go through it."""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from . import adaptive_passes, analytic
from .format import mask_sets
from .checks import int_in_range, positive_int
from .errors import InputError
from .limits import Limits
from .format.metadata import ModelInfo
from .format.rules import MASKS_FROM_FORMAT

# How errors name the choices: Python's keyword arguments, or the command line's flags.
ARGUMENTS = {"passes": "passes", "masks": "masks", "mask_seed": "mask_seed", "max_passes": "max_passes",
             "min_passes": "min_passes"}
FLAGS = {"passes": "--passes", "masks": "--masks", "mask_seed": "--mask-seed", "max_passes": "--max-passes",
         "min_passes": "--min-passes"}


@dataclass(frozen=True)
class RunPlan:
    """What a predict runs: `passes` passes (1 with dropout off), masks "shared" or
    "independent" (None with dropout off), and the shared set's seed (None unless shared).
    passes="auto": `auto` holds the rounds' bounds and `passes` is their max_passes."""

    passes: int
    stochastic: bool
    masks: Optional[str]
    mask_seed: Optional[int]
    auto: Optional[adaptive_passes.AutoPasses] = None
    method: str = "mc"  # or "analytic": one run of the file's moment graph (runtime/analytic.py)

    @property
    def shared(self) -> bool:
        return self.masks == "shared"

    def arguments(self) -> dict:
        """predict's keyword arguments that run this plan."""
        if self.method != "mc":
            return dict(method=self.method)
        chosen = dict(passes=self.passes, dropout=self.stochastic, masks=self.masks, mask_seed=self.mask_seed)
        if self.auto is not None:
            chosen.update(passes=adaptive_passes.AUTO, max_passes=self.auto.max_passes,
                          min_passes=self.auto.min_passes)
        return chosen


def check_passes(passes, limits: Limits, name: str = "passes") -> int:
    """passes as an int >= 1 within limits.passes."""
    passes = positive_int(name, passes)
    limits.check("passes", passes, f"{name} {passes:,}")
    return passes


def resolve(info: ModelInfo, path: str, limits: Limits, default_seed: int, passes: Optional[int] = None,
            masks: Optional[str] = None, mask_seed: Optional[int] = None, dropout: bool = True,
            names: Mapping[str, str] = ARGUMENTS, max_passes: Optional[int] = None,
            min_passes: Optional[int] = None, method: str = "mc") -> RunPlan:
    """The RunPlan of a predict of the file `info` describes; None takes the default: the file's
    passes, shared masks where the file takes a mask set (else independent), `default_seed`.
    passes="auto" (runtime/adaptive_passes.py): max_passes defaults to the file's passes.
    method="analytic" takes none of the Monte Carlo choices (runtime/analytic.py)."""
    analytic.check_arguments(info, path, method, names, passes, masks, mask_seed, dropout, max_passes, min_passes)
    if method != "mc":
        return RunPlan(1, True, None, None, method=method)
    if names is FLAGS:  # the command line's text: a number or "auto"
        passes = adaptive_passes.parse_passes(passes)
    auto = adaptive_passes.check(passes, max_passes, min_passes, info.default_passes, names)
    if auto is not None:
        passes = check_passes(auto.max_passes, limits, names["max_passes"])
    passes = info.default_passes if passes is None else check_passes(passes, limits, names["passes"])
    if mask_seed is not None:
        mask_seed = int_in_range(names["mask_seed"], mask_seed, 0, mask_sets.MAX_SEED, "2**64 - 1")
    mode = default_masks(info) if masks is None else mask_sets.check_mode(masks)
    if mode == "shared" and info.mask_layout is None:
        why = (f"it was exported before mask sets (format {info.format}); export it again"
               if info.format < MASKS_FROM_FORMAT else "its noise shapes depend on the input size")
        raise InputError(f"{path} cannot take a shared mask set: {why}; use masks='independent'")
    if mask_seed is not None and mode != "shared":
        raise InputError("mask_seed is for masks='shared'")
    if auto is not None and info.metadata.get("members"):  # its rounds would hold K samples per pass
        raise InputError(f"{path} is an ensemble; {names['passes']} auto is for single-model files")
    if auto is not None and info.portable is not None:
        raise InputError(f"{path} is a portable file of fixed passes; {names['passes']} auto is for ONNX mcdrop files")
    if auto is not None and (mode != "shared" or not dropout):
        raise InputError(f"{names['passes']} auto runs rounds of a shared mask set: "
                         + (f"{names['masks']} independent cannot take it" if dropout else "it needs dropout on"))
    if not dropout:
        return RunPlan(1, False, None, None)
    return RunPlan(passes, True, mode, (default_seed if mask_seed is None else mask_seed) if mode == "shared" else None,
                   auto)


def check_flags(passes, max_passes: Optional[int], min_passes: Optional[int], limits: Limits):
    """The command line's --passes, --max-passes and --min-passes checked before a file is loaded:
    passes as an int, "auto" or None."""
    passes = adaptive_passes.parse_passes(passes)
    auto = adaptive_passes.check(passes, max_passes, min_passes, max_passes or min_passes or 1, FLAGS)
    if auto is not None or passes is not None:
        check_passes(passes if auto is None else auto.max_passes, limits, FLAGS["passes" if auto is None else "max_passes"])
    return passes


def default_masks(info: ModelInfo) -> str:
    """"shared" where the file takes a mask set (runtime/format/mask_sets.py; docs/DESIGN.md: Mask sets):
    they score faster, and an input's result then depends on (input, mask seed, passes) alone;
    else "independent"."""
    return "shared" if info.mask_layout is not None else "independent"


def rows_of(x: Dict[str, np.ndarray], rows: slice) -> Dict[str, np.ndarray]:
    """The rows `rows` of each input of a batch."""
    return {name: value[rows] for name, value in x.items()}
