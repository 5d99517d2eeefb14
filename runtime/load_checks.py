"""The trust checks on load: what a model file must pass before onnxruntime runs it (checksum,
self-contained data, tensor bounds, metadata, the graph's contract, random nodes and seeds), and
onnxruntime's refusals turned into one-line ModelFileErrors."""

import os
from typing import Optional, Tuple

import onnxruntime as ort

from . import providers, tensor_bounds
from .format import integrity, seeds
from .errors import ModelFileError, first_line
from .limits import DEFAULT, Limits
from .format.metadata import ModelInfo
from .format.rules import METADATA_KEY
from .format.onnx_file import ModelFile, read_model


def check_model_bytes(model_bytes: bytes, path: str, limits: Limits = DEFAULT) -> ModelInfo:
    """What MCSession checks before the first run (checksum, self-contained data, metadata, the
    graph's contract, random nodes and seeds), on bytes not yet written: the exporter runs it on
    every file, --no-validate or not, so that nothing the runtime would refuse is ever written."""
    parsed, _ = checked_file(model_bytes, path, verify=True, allow_external_data=False, limits=limits)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = providers.create_session(model_bytes, "cpu", options)
    except Exception as err:
        if not load_failure(err):
            raise
        raise load_error(err, path) from None
    return model_info(session, parsed, path, limits)


def checked_file(model_bytes: bytes, path: str, verify: bool, allow_external_data: bool,
                 limits: Limits) -> Tuple[ModelFile, Optional[str]]:
    """(the parsed file, the folder of its external data or None), once its checksum (if
    `verify`), its data's whereabouts and the tensors its fixed shapes imply (before onnxruntime
    folds or allocates them) are checked."""
    parsed = read_model(model_bytes, path)
    if verify:
        integrity.verify(model_bytes, parsed, path)
    folder = external_data_folder(parsed, path, allow_external_data)
    tensor_bounds.check(parsed.graph, limits, path)
    return parsed, folder


def model_info(session, parsed: ModelFile, path: str, limits: Limits) -> ModelInfo:
    """What the file says, checked against the session's graph and its random nodes' seeds."""
    info = ModelInfo.from_session(session, path, parsed.metadata.get(METADATA_KEY), limits)
    if info.portable is not None:  # portable profile: its masks are fed, no node may draw
        if parsed.random_nodes:
            raise ModelFileError(f"{path}: a portable file holds random node {parsed.random_nodes[0].name!r}; "
                                 "convert the standard file again")
        return info
    seeds.check_seeds(parsed, info.stochastic_layers, path)
    return info


def load_failure(err: BaseException) -> bool:
    """onnxruntime refusing or failing to hold the file: the file's problem, not a bug. A
    UnicodeDecodeError is onnxruntime's refusal too: its message quoted a name from the file
    that is not UTF-8, and pybind11 could not turn it into text (tests/test_fuzz.py found one)."""
    return from_onnxruntime(err) or isinstance(err, (MemoryError, OverflowError, UnicodeDecodeError))


def load_error(err: BaseException, path: str) -> ModelFileError:
    reason = "a name in the file is not UTF-8" if isinstance(err, UnicodeDecodeError) else first_line(err)
    return ModelFileError(f"{path}: onnxruntime cannot load it ({reason})")


def from_onnxruntime(err: BaseException) -> bool:
    """onnxruntime's Python errors (Fail, InvalidArgument, RuntimeException, ...) live in its
    pybind module; a RuntimeError it raises for allocation failures does too."""
    return type(err).__module__.startswith("onnxruntime")


def external_data_folder(parsed: ModelFile, path: str, allowed: bool) -> Optional[str]:
    """None for a self-contained file. External data is refused unless allowed, and then read only
    from the model's own folder: onnxruntime would otherwise resolve it against the working
    folder of whoever runs the model."""
    if not parsed.external_data:
        return None
    tensor, location = parsed.external_data[0]
    if not allowed:
        raise ModelFileError(f"{path}: tensor {tensor!r} keeps its data in another file ({location!r}); "
                             "mcdrop files are self-contained, so this is refused (pass "
                             "--allow-external-data to read it from the model's own folder)")
    folder = os.path.dirname(os.path.realpath(path))
    for tensor, location in parsed.external_data:
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.isabs(location) or os.path.commonpath([folder, target]) != folder:
            raise ModelFileError(f"{path}: tensor {tensor!r} points outside the model's folder "
                                 f"({location!r}); refused")
        if not os.path.isfile(target):
            raise ModelFileError(f"{path}: tensor {tensor!r}: external data {location!r} is not a "
                                 "regular file in the model's folder")
    return folder
