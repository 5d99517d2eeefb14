"""Bounds on the work a model file, an input file or a flag can ask for.

Every number that comes from outside (a model's metadata, an array's header, an image's size, a
flag) is checked against these before it is used, so a small hostile file cannot make mcdrop
allocate gigabytes or spin for minutes. Each bound can be raised: `Limits(passes=100_000)` in
Python, `--limit passes=100000` on the command line. The defaults are chosen in docs/DESIGN.md
("Bounded work").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Iterable, Optional

from .checks import positive_finite
from .errors import InputError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Limits:
    """The largest values mcdrop accepts; raise one with `--limit NAME=VALUE`."""

    model_mb: float = 2048  # an ONNX file (protobuf itself stops at 2 GiB)
    passes: int = 10_000  # Monte Carlo passes, from the file's default or a flag
    input_mb: float = 1024  # decoded input arrays and images, all together
    image_pixels: int = 40_000_000  # one decoded image (a 40 MP photo)
    metadata_kb: int = 1024  # the file's mcdrop JSON
    tensor_mb: float = 1024  # one tensor the graph asks for (and onnxruntime's arena: runtime/session.py)
    threads: Optional[int] = None  # None: the cores this process may use

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "threads" and value is None:
                continue
            positive_finite(f"limit {field.name}", value)

    @property
    def max_threads(self) -> int:
        return self.threads if self.threads is not None else usable_cores()

    @property
    def model_bytes(self) -> int:
        return int(self.model_mb * 2**20)

    @property
    def input_bytes(self) -> int:
        return int(self.input_mb * 2**20)

    @property
    def tensor_bytes(self) -> int:
        return int(self.tensor_mb * 2**20)

    def check(self, name: str, value, what: str) -> None:
        """InputError unless value <= the limit `name`; the message says how to raise it."""
        bound = self.max_threads if name == "threads" else getattr(self, name)
        if value > bound:
            raise InputError(f"{what} is over the {name} limit ({_number(bound)}); "
                             f"raise it with --limit {name}=N if you trust this input")

    @classmethod
    def parse(cls, settings: Iterable[str]) -> "Limits":
        """Limits from NAME=VALUE strings (the --limit flag); unknown names and bad values are
        InputErrors."""
        known = {field.name: field for field in fields(cls)}
        values = {}
        for setting in settings:
            name, sep, text = setting.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise InputError(f"--limit {setting!r}: expected NAME=VALUE with NAME one of "
                                 f"{', '.join(known)}")
            try:
                number = float(text)
                if not math.isfinite(number):
                    raise ValueError
                values[name] = int(number) if number.is_integer() else number
            except ValueError:
                raise InputError(f"--limit {setting!r}: {text!r} is not a finite number") from None
            if known[name].type in ("int", "Optional[int]") and not float(values[name]).is_integer():
                raise InputError(f"--limit {setting!r}: {name} takes a whole number")
        return cls(**values)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


DEFAULT = Limits()
