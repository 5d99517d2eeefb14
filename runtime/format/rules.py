"""The file format's rules that the writers (export, calibrate, quantize) and the reader
(runtime/format/metadata.py) both follow, written once: the metadata key and version, the heads,
the graph's input and output names, and how many labels a head takes (docs/FORMAT.md).
"""

import re
from typing import List, Optional, Tuple

from .mask_sets import MASKS

METADATA_KEY = "mcdrop"
# 2: `passes` and `stochastic` are plain required inputs (1 gave them initializers as defaults,
# which onnxruntime-node and -web hide, and which warn at every session creation).
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
# Format 3 added the `masks` input (docs/FORMAT.md: Mask sets).
MASKS_FROM_FORMAT = 3
HEADS = ("softmax", "logits", "binary", "multilabel", "regression")
COLOR_CHANNELS = {"grayscale": 1, "rgb": 3}
CHANNEL_ORDERS = ("rgb", "bgr")
# A pipeline's name is shown to users: a short plain word ("tf", "torch", "caffe", "custom", ...).
PIPELINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# The graph's contract (docs/FORMAT.md): input name -> onnxruntime type; samples must be an output
# (<output name>/samples for each output of a file with several).
INPUT = "input"
CONTROL_TYPES = {"passes": "tensor(int64)", "stochastic": "tensor(bool)", MASKS: "tensor(float)"}
# A portable file (docs/FORMAT.md: Portable profile) fixes T, so it has no `passes`; its masks are
# uint8 keep masks, an initializer rather than an input when they are baked.
PORTABLE_CONTROL_TYPES = {"stochastic": "tensor(bool)", MASKS: "tensor(uint8)"}
PORTABLE_MASKS = ("keep-uint8",)
FLOAT = "tensor(float)"
SAMPLES = "samples"
# An input or output name of a file with several (export/signature.py writes them).
TENSOR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_TENSORS = 64
# Shapes with None (or a name) for dimensions fixed only at run time, such as the batch.
Shape = Tuple[Optional[int], ...]


def labels_problem(count: int, head: str, units: Optional[int]) -> Optional[str]:
    """Why `count` labels do not fit a `head` with `units` outputs (a binary head has one unit and
    two labels; a regression head none), or None. `units` None: not known, any count fits."""
    wanted = 2 if head == "binary" else units
    if head == "regression" or (wanted is not None and count != wanted):
        return f"{count} labels for a {head} head with {wanted} outputs"
    return None


def output_prefixes(names: List[str]) -> List[str]:
    """Each output's prefix for its graph outputs: "" for a file with one output (plain `samples`,
    `mean`, ...), else "<name>/" (`<name>/samples`, ...)."""
    return [""] if len(names) == 1 else [f"{name}/" for name in names]
