"""The file a `convert` profile rewrites: read once within the limits, loaded with every check the
runtime makes (and its checksum unless --no-verify), errors naming the user's path."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..runtime.errors import ModelFileError


@dataclass
class SourceModel:
    data: bytes  # the file's bytes
    sealed: bool  # whether its checksum holds: an unsealed source gives an unsealed output
    session: object  # an MCSession of it (seed 0)
    folder: Path  # a temporary folder that lives as long as the `with` block


@contextlib.contextmanager
def opened_source(source, output, limits, verify: bool = True, threads: Optional[int] = 1):
    """SourceModel of `source` for writing `output`. An unsealed source loads only without verify, and
    then gives one warning: its output is written without a checksum, as calibrate's is, since a fresh
    checksum would vouch for bytes nobody checked."""
    from ..runtime.safe_files import check_writable_target, read_regular
    from ..runtime.session import MCSession

    check_writable_target(Path(output))
    data = read_regular(str(source), limits.model_bytes, ModelFileError, "model file", "model_mb")
    sealed = checksum_holds(data, str(source))
    with tempfile.TemporaryDirectory(prefix="mcdrop-convert-") as folder:
        path = Path(folder) / "standard.onnx"
        path.write_bytes(data)
        try:  # the runtime's load checks, and the checksum unless verify is False
            session = MCSession(path, seed=0, limits=limits, verify=verify, threads=threads)
        except Exception as err:
            raise type(err)(str(err).replace(str(path), str(source))) from None
        if not sealed:
            warnings.warn(f"{source}: its integrity checksum is missing or wrong; {output} is written without one, "
                          "so loading it needs --no-verify too", stacklevel=3)
        yield SourceModel(data, sealed, session, Path(folder))


def checksum_holds(model_bytes: bytes, path: str) -> bool:
    from ..runtime.format.integrity import verify
    from ..runtime.format.onnx_file import read_model

    try:
        verify(model_bytes, read_model(model_bytes, path), path)
    except ModelFileError:
        return False
    return True
