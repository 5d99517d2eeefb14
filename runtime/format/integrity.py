"""A checksum that tells a modified mcdrop file from the one the exporter wrote.

The exporter appends one metadata_props entry, "mcdrop.sha256", holding the SHA-256 (hex) of
every other byte of the file: the graph, its weights, the opsets and the "mcdrop" metadata alike.
Appending a field is valid protobuf, so the file stays a plain ONNX file for any reader. The
runtime removes that entry's bytes, hashes the rest and compares. It detects corruption and
edits, not a forger (anyone can recompute a hash); see the trust model in README.md.
"""

from __future__ import annotations

import hashlib

from ..errors import ModelFileError
from .onnx_file import ModelFile, encode_entry, read_model

CHECKSUM_KEY = "mcdrop.sha256"


def seal(model_bytes: bytes) -> bytes:
    """The file with its checksum entry appended (an old one is replaced)."""
    parsed = read_model(model_bytes)
    if CHECKSUM_KEY in parsed.metadata_spans:
        start, end = parsed.metadata_spans[CHECKSUM_KEY]
        model_bytes = model_bytes[:start] + model_bytes[end:]
    digest = hashlib.sha256(model_bytes).hexdigest()
    return model_bytes + encode_entry(CHECKSUM_KEY, digest.encode())


def verify(model_bytes: bytes, parsed: ModelFile, path: str) -> None:
    """ModelFileError unless the file carries a checksum that matches its bytes."""
    if CHECKSUM_KEY not in parsed.metadata:
        raise ModelFileError(f"{path}: has no integrity checksum (exported by an older mcdrop, or "
                             "calibrated from an unverified file with --no-verify); "
                             "export it again, or pass --no-verify to load it unchecked")
    start, end = parsed.metadata_spans[CHECKSUM_KEY]
    digest = hashlib.sha256(model_bytes[:start] + model_bytes[end:]).hexdigest()
    if parsed.metadata[CHECKSUM_KEY] != digest.encode():
        raise ModelFileError(f"{path}: was modified after export (integrity checksum mismatch); "
                             "export it again, or pass --no-verify to load it anyway")
