"""Finds code a Keras model file would run when loaded, by reading its config as plain data.

Loading a Keras model rebuilds its layers from a JSON config, and some configs carry Python code:
a Lambda layer's function is marshalled bytecode that Keras (and tf_keras, even with
safe_mode=True, for Keras 2 SavedModels) turns back into a function and calls while loading; a
`module` outside Keras makes tf_keras import that module and take a function from it. So the
exporter reads the config itself, without Keras, before anything loads the file:

- a .keras file: `config.json` in the zip (read with a size cap, nothing extracted);
- a legacy .h5/.hdf5 file: the root attribute `model_config`;
- a Keras 2 SavedModel folder: `keras_metadata.pb`, a SavedMetadata protobuf whose nodes (field 1)
  each hold one layer's JSON (field 5), read with the runtime's own wire-format reader.

It refuses, anywhere in the config (nested models, wrappers, activations given as objects):
Lambda layers and `__lambda__` objects, `*_type: "lambda"` functions, strings holding marshalled
bytecode, modules outside Keras, custom registered objects (`Package>Name`), Python builtins named
as functions, and TFSMLayer (it loads another SavedModel named in its config). The top-level
compile config is skipped: the exporter loads with compile=False, so it is never read.
"""

from __future__ import annotations

import binascii
import builtins
import codecs
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, List

from ..runtime.errors import ModelFileError, UnsafeModelError, first_line

__all__ = ["check_model_code", "find_code", "model_configs", "MAX_CONFIG_BYTES", "MAX_NESTING"]

MAX_CONFIG_BYTES = 64 * 2**20  # a config (or keras_metadata.pb); real ones are kilobytes to a few MB
MAX_NESTING = 400  # nested containers in a config; Keras itself recurses per level
SHOWN = 3  # findings named in the message
REFUSED = "refused (pass --trust-model-code if you trust this file's author)"
# A registered class is looked up, not carried: trusting the file cannot load it, the user's module can.
REFUSED_CUSTOM = ("refused: pass --custom-objects FILE.py, a Python file of yours that defines and registers "
                  "these classes (@keras.saving.register_keras_serializable)")
REFUSED_BOTH = ("refused (--custom-objects FILE.py for the custom objects; --trust-model-code for the file's "
                "own code, only if you trust its author)")

KERAS_PACKAGES = ("keras", "tf_keras")
LAMBDA_CLASSES = ("Lambda", "__lambda__")
# Keys whose value the loader never reads with compile=False (top level only).
UNREAD_TOP_LEVEL = ("compile_config", "training_config")
# SavedMetadata.nodes; SavedObject.metadata (tf_keras/protobuf_saved_metadata)
METADATA_NODES, NODE_METADATA = 1, 5


def check_model_code(path, registered: Iterable[str] = ()) -> None:
    """UnsafeModelError if loading `path` would run Python code that the file brings along;
    ModelFileError if its config cannot be read. `registered`: names of custom objects the user's
    own module registered (--custom-objects); those load the user's code, not the file's."""
    findings: List[str] = []
    for config in model_configs(path):
        findings += find_code(config, path, frozenset(registered))
    if findings:
        unique = list(dict.fromkeys(findings))  # a SavedModel lists a layer in its model and on its own
        more = f"; and {len(unique) - SHOWN} more" if len(unique) > SHOWN else ""
        custom = sum(isinstance(finding, CustomObject) for finding in unique)
        refused = REFUSED_CUSTOM if custom == len(unique) else REFUSED_BOTH if custom else REFUSED
        raise UnsafeModelError(f"{path}: {'; '.join(unique[:SHOWN])}{more}; {refused}")


class CustomObject(str):
    """A finding that is a registered custom object (`Package>Name`): --custom-objects loads it."""


def model_configs(path) -> List[object]:
    """The parsed JSON configs Keras would rebuild the model from (one per SavedModel node)."""
    path = Path(path)
    if path.is_dir():
        texts = _saved_model_texts(path)
    elif path.suffix == ".keras":
        texts = [_keras_archive_text(path)]
    elif path.suffix in (".h5", ".hdf5"):
        texts = [_h5_text(path)]
    else:
        raise ModelFileError(f"{path}: expected a .keras file, an .h5 file or a SavedModel directory")
    return [_parse_json(text, path) for text in texts]


def _cannot_load(path, detail) -> ModelFileError:
    return ModelFileError(f"{path}: cannot load the Keras model ({detail})")


def _keras_archive_text(path: Path) -> bytes:
    """config.json of a Keras 3 .keras zip, read from the open file with a cap on its size."""
    from ..runtime.safe_files import open_regular

    with os.fdopen(open_regular(path, ModelFileError, "model file"), "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                try:
                    info = archive.getinfo("config.json")
                except KeyError:
                    raise _cannot_load(path, "no config.json in the archive") from None
                if info.file_size > MAX_CONFIG_BYTES:
                    raise _too_big(path, "config.json")
                with archive.open(info) as member:
                    data = member.read(MAX_CONFIG_BYTES + 1)  # the declared size may lie
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as err:
            raise _cannot_load(path, f"not a readable .keras archive: {first_line(err)}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_big(path, "config.json")
    return data


def _h5_text(path: Path):
    """The `model_config` attribute of a legacy HDF5 model file, size checked before it is read."""
    import h5py

    from ..runtime.safe_files import open_regular

    with os.fdopen(open_regular(path, ModelFileError, "model file"), "rb") as f:
        try:
            with h5py.File(f, "r") as h5:
                if "model_config" not in h5.attrs:
                    raise _cannot_load(path, "no model_config in the file: weights only?")
                if h5.attrs.get_id("model_config").get_storage_size() > MAX_CONFIG_BYTES:
                    raise _too_big(path, "model_config")
                value = h5.attrs["model_config"]
        except ModelFileError:
            raise
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise _cannot_load(path, f"not a readable HDF5 file: {first_line(err)}") from None
    if getattr(value, "shape", None) == (1,):
        value = value[0]
    if not isinstance(value, (bytes, str)):
        raise _cannot_load(path, f"model_config is {type(value).__name__}, not JSON text")
    if len(value) > MAX_CONFIG_BYTES:  # a variable-length string's storage size is not its length
        raise _too_big(path, "model_config")
    return value


def _saved_model_texts(folder: Path) -> List[bytes]:
    """Each node's JSON in keras_metadata.pb, parsed without tensorflow or tf_keras; none if the
    folder has no such file (then no Keras layers are rebuilt from it)."""
    from ..runtime.format.onnx_file import LENGTH, WireError, _fields

    source = folder / "keras_metadata.pb"
    if not os.path.lexists(source):
        return []
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(source)]) != root:
        raise ModelFileError(f"{source}: a symbolic link out of the SavedModel folder; refused")
    data = _read_capped(source)
    view, texts = memoryview(data), []
    try:
        for number, wire, span, _, _ in _fields(view, 0, len(view)):
            if number != METADATA_NODES or wire != LENGTH:
                continue
            for inner, inner_wire, value, _, _ in _fields(view, *span):
                if inner == NODE_METADATA and inner_wire == LENGTH:
                    texts.append(bytes(view[value[0]:value[1]]))
    except WireError as err:
        raise _cannot_load(source, f"malformed keras_metadata.pb: {err}") from None
    return texts


def _read_capped(path: Path) -> bytes:
    from ..runtime.safe_files import open_regular

    with os.fdopen(open_regular(path, ModelFileError, "Keras metadata file"), "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_big(path, path.name)
    return data


def _too_big(path, what) -> ModelFileError:
    return ModelFileError(f"{path}: {what} is over {MAX_CONFIG_BYTES // 2**20} MiB; not a Keras model config")


def _parse_json(text, path):
    try:
        return json.loads(text)
    except RecursionError:
        raise _cannot_load(path, "its config nests too deep") from None
    except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError
        raise _cannot_load(path, f"its config is not JSON: {first_line(err)}") from None


def find_code(config, path="model", registered: frozenset = frozenset()) -> List[str]:
    """One line per object in `config` whose loading would run code from the file, naming the
    layer that holds it. Iterative, so a deeply nested config is a ModelFileError, not a crash."""
    findings: List[str] = []
    stack = [(config, 0, None)]
    while stack:
        node, depth, owner = stack.pop()
        if depth > MAX_NESTING:
            raise _cannot_load(path, f"its config nests more than {MAX_NESTING} levels deep")
        if isinstance(node, str):
            if _is_bytecode(node):
                findings.append(f"{_who(owner)} holds marshalled Python bytecode, which would run when loaded")
            continue
        if isinstance(node, list):
            children: Iterable = node
        elif isinstance(node, dict):
            owner = _owner(node, owner)
            finding = None if _user_registered(node, registered) else _object_finding(node, owner)
            if finding:
                findings.append(finding)
                continue  # its insides are refused with it
            children = (v for k, v in node.items() if not (depth == 0 and k in UNREAD_TOP_LEVEL))
        else:
            continue
        stack.extend((child, depth + 1, owner) for child in reversed(list(children)))
    return findings


def _user_registered(node: dict, registered: frozenset) -> bool:
    """A custom object the user's --custom-objects module registered: Keras finds it in its
    registry by this name, so its code is the user's (what it holds is still checked)."""
    name = node.get("registered_name")
    return isinstance(name, str) and name in registered


def _owner(node: dict, outer):
    """(name, class) of the layer a config object describes, else the enclosing one's."""
    class_name = node.get("class_name")
    if not isinstance(class_name, str):
        return outer
    inner = node.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    name = name if isinstance(name, str) else node.get("name")
    return (name, class_name) if isinstance(name, str) else outer


def _who(owner) -> str:
    return f"layer '{owner[0]}' ({owner[1]})" if owner else "the model config"


def _object_finding(node: dict, owner):
    """Why loading this config object would run code from the file, or None."""
    class_name = node.get("class_name")
    base = class_name.rsplit(">", 1)[-1].rsplit(".", 1)[-1] if isinstance(class_name, str) else None
    if base == "Lambda":
        name = owner[0] if owner else "?"
        return f"layer '{name}' is a Lambda layer, whose Python code would run when loaded"
    if base == "__lambda__":
        return f"{_who(owner)} holds a Python lambda, whose code would run when loaded"
    if base == "TFSMLayer":
        return f"{_who(owner)} is a TFSMLayer, which loads another SavedModel named in its config"
    for key, value in node.items():
        if isinstance(key, str) and key.endswith("_type") and value == "lambda":
            return f"{_who(owner)} holds a Python lambda ({key}), whose code would run when loaded"
    registered = node.get("registered_name")
    for custom in (registered, class_name):
        if isinstance(custom, str) and ">" in custom:
            return CustomObject(f"{_who(owner)} holds the custom object '{custom}', whose code is not part of Keras")
    module = node.get("module")
    if isinstance(module, str) and not _stock_module(module, class_name, node.get("config")):
        what = f"function '{node.get('config')}' of " if class_name == "function" else ""
        return f"{_who(owner)} names the {what}Python module '{module}', outside Keras, whose code would run when loaded"
    return None


def _stock_module(module: str, class_name, config) -> bool:
    """Whether stock Keras writes (and loads without importing outside code) this `module`.

    Keras 3 and tf_keras write public API modules (keras.layers, keras.initializers, ...) and a
    few internal ones for classes (keras.src.models.functional); plain functions come from public
    modules, or "builtins" for names Keras looks up among its own built-ins (tf_keras would fall
    back to Python's builtins, so those names are refused)."""
    parts = module.split(".")
    if parts[0] in KERAS_PACKAGES:
        if class_name == "function":
            return not any(part == "src" or part.startswith("_") for part in parts)
        return True
    if module == "builtins" and class_name == "function" and isinstance(config, str):
        return config.split(".", 1)[0] not in vars(builtins)
    return parts[0] == "tensorflow" and class_name == "__typespec__"


def _is_bytecode(text: str) -> bool:
    """Whether Keras's func_load would turn `text` into a code object: base64 (leniently decoded,
    as Keras does) or raw marshal data starting with a code object's header."""
    if len(text) < 16:
        return False
    try:
        raw = codecs.decode(text.encode("ascii"), "base64")
    except (UnicodeEncodeError, binascii.Error):
        raw = text.encode("raw_unicode_escape")
    return _code_header(raw)


def _code_header(raw: bytes) -> bool:
    """marshal's TYPE_CODE ('c', with or without FLAG_REF) followed by three small int32 counts
    (arguments, positional-only, keyword-only), as every CPython 3 writes them."""
    return (
        len(raw) >= 13
        and raw[0] in (0x63, 0xE3)
        and raw[2:5] == b"\0\0\0"
        and raw[6:9] == b"\0\0\0"
        and raw[10:13] == b"\0\0\0"
    )
