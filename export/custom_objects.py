"""The user's own Keras custom objects: a Python file imported before the model loads.

A model with custom layers registered by `keras.saving.register_keras_serializable` loads only
where the module that registers them has been imported. `export --custom-objects my_layers.py`
imports that file, which runs its code: it is the user's code, on the user's say-so. The names it
registers are then let through the check for code the model file brings along (export.model_code).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import FrozenSet

from ..runtime.errors import ExportError, first_line


# An installed package named instead of a file: `--custom-objects keras_hub` loads keras-hub's
# backbones and tasks (their configs name them `keras_hub>BertBackbone`, ...).
PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_custom_objects(path) -> FrozenSet[str]:
    """Import the Python file `path` (or the installed package of that name, such as keras_hub)
    and return the names of the Keras objects it registered."""
    import keras

    path = Path(path)
    if path.suffix != ".py" and not path.exists() and PACKAGE_NAME.fullmatch(str(path)):
        return _import_package(str(path))
    if path.suffix != ".py" or not path.is_file():
        raise ExportError(f"--custom-objects {path}: expected a Python file (.py) or an installed package (keras_hub)")
    before = set(keras.saving.get_custom_objects())
    name = f"mcdrop_custom_objects_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code may raise anything
        del sys.modules[name]
        raise ExportError(f"--custom-objects {path}: importing it failed ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    registered = frozenset(set(keras.saving.get_custom_objects()) - before)
    if not registered:
        raise ExportError(f"--custom-objects {path}: registers no Keras object "
                          "(decorate its classes with @keras.saving.register_keras_serializable())")
    return registered


def _import_package(name) -> FrozenSet[str]:
    """The Keras objects an installed package registers (imported now, or already)."""
    import keras

    try:
        importlib.import_module(name)
    except ImportError as err:
        raise ExportError(f"--custom-objects {name}: no Python file or installed package of that name "
                          f"({first_line(err)})") from None
    except Exception as err:  # the package's own code may raise anything
        raise ExportError(f"--custom-objects {name}: importing it failed ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    top = name.split(".", 1)[0]
    registered = frozenset(key for key, obj in keras.saving.get_custom_objects().items()
                           if getattr(obj, "__module__", "").split(".", 1)[0] == top)
    if not registered:
        raise ExportError(f"--custom-objects {name}: the package registers no Keras object")
    return registered
