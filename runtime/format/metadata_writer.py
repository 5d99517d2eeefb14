"""The one writer of a file's "mcdrop" metadata entry (docs/FORMAT.md), used by export, calibrate
and int8 quantization alike.

It takes plain values (the metadata as a dict, built by its caller) and an onnx ModelProto, which
it only touches through `metadata_props` and the producer fields: the runtime never imports onnx.
The checksum entry is dropped with the rest; runtime/format/integrity.py's `seal` writes it
again over the final bytes.
"""

import json
from typing import Optional

from .rules import METADATA_KEY

PRODUCER = "mcdrop"


def write_metadata(proto, metadata: dict, producer_version: Optional[str] = None) -> None:
    """Make `metadata` the proto's only metadata entry; with `producer_version`, also name mcdrop
    as the graph's producer (the exporter does; calibrate keeps the file's)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_text(metadata)
    if producer_version is not None:
        proto.producer_name, proto.producer_version = PRODUCER, producer_version


def metadata_text(metadata: dict) -> str:
    """The metadata as the file stores it: JSON text (an ONNX metadata entry; the LiteRT flatbuffer's
    metadata buffer holds the same text, export/litert.py)."""
    return json.dumps(metadata)


def metadata_of(proto) -> Optional[dict]:
    """The proto's metadata as a dict, or None if it has no "mcdrop" entry. For files mcdrop has
    just written or checked: the runtime's reader (runtime/format/metadata.py) is the one for
    untrusted files."""
    text = next((entry.value for entry in proto.metadata_props if entry.key == METADATA_KEY), None)
    return None if text is None else json.loads(text)
