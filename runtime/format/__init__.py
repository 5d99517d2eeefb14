"""The mcdrop file format (docs/FORMAT.md), owned in one place: the protobuf reader (onnx_file),
the integrity checksum (integrity), the random nodes' seeds (seeds), mask sets (mask_sets), the
metadata's rules (rules), its reader (metadata, metadata_fields) and its one writer
(metadata_writer). Standard library and numpy only.
"""
