"""What a file that skips dropped units (`convert --skip-dropped`: convert/dropped_units.py,
docs/FORMAT.md: Files that skip dropped units) asks of the chunk planner: room for the weight rows
a run gathers per pass, and runs that keep a batch's rows together (its skipping branch runs from
`min_batch` rows per run), the passes split among the workers instead."""

from typing import Optional

from .checks import is_int
from .errors import ModelFileError

KEY = "dropped_units"
MAX_FLOATS_PER_PASS = 2**40  # any real file is far below; a bound keeps the planner's arithmetic sane


def gathered_floats_per_pass(metadata: dict, path: Optional[str] = None) -> Optional[int]:
    """None for a file that does not skip dropped units, else the floats its runs gather per pass,
    checked (the file is untrusted until then: ModelFileError)."""
    entry = metadata.get(KEY)
    if entry is None:
        return None
    floats = entry.get("floats_per_pass") if isinstance(entry, dict) else None
    if not is_int(floats) or not 0 <= floats <= MAX_FLOATS_PER_PASS:
        raise ModelFileError(f"{path or 'the file'}: metadata {KEY}.floats_per_pass must be an integer from 0 to "
                             f"2**40, got {floats!r}")
    return int(floats)
