"""SessionSettings: how MCSession loads and runs a file, checked once when made (as onnxruntime's
SessionOptions), then handed as one value to every session a command opens: the CLI's, score's
Ray actors', calibrate's."""

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .checks import int_in_range, non_negative_int, positive_int
from .errors import InputError
from .limits import DEFAULT, Limits, usable_cores
from .format.mask_sets import MAX_SEED


@dataclass(frozen=True)
class SessionSettings:
    """device: "auto", "cpu" or "cuda". seed: the session's seed (and default mask seed; None:
    fresh). threads: CPU threads (None or 0: every core this process may use). max_chunk_bytes:
    the activation memory of the runs in flight at once (None: 256 MiB on the CPU, 4 GiB on CUDA,
    where runs are on the GPU; runtime/chunk_plan.py). limits: the bounds on what a file or an
    input may ask for. verify: refuse a file whose integrity checksum is missing or wrong.
    allow_external_data: read tensors stored in other files, from the model's own folder only.
    session_factory: stands in for onnxruntime.InferenceSession (tests)."""

    device: str = "auto"
    seed: Optional[int] = None
    threads: Optional[int] = None
    max_chunk_bytes: Optional[int] = None
    limits: Limits = DEFAULT
    verify: bool = True
    allow_external_data: bool = False
    session_factory: Optional[Callable] = None

    def __post_init__(self):
        if not isinstance(self.limits, Limits):
            raise InputError(f"limits must be a Limits, got {self.limits!r}")
        if self.max_chunk_bytes is not None:
            self._set("max_chunk_bytes", positive_int("max_chunk_bytes", self.max_chunk_bytes))
        if self.threads is not None:
            self._set("threads", non_negative_int("threads (0: every core)", self.threads))
        if self.threads:
            self.limits.check("threads", self.threads, f"threads {self.threads} (this machine lets the process "
                              f"use {usable_cores()} cores)")
        if self.seed is not None:  # the seed is the default mask seed too
            self._set("seed", int_in_range("seed", self.seed, 0, MAX_SEED, "2**64 - 1"))
        self._set("verify", bool(self.verify))
        self._set("allow_external_data", bool(self.allow_external_data))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    @property
    def cores(self) -> int:
        """The threads a session of these settings runs with."""
        return self.threads or usable_cores()

    def replace(self, **changes) -> "SessionSettings":
        """These settings with some changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flags(cls, device: str = "auto", threads: Optional[int] = None, max_chunk_mb: Optional[float] = None,
                   limit: Iterable[str] = (), no_verify: bool = False, allow_external_data: bool = False,
                   seed: Optional[int] = None) -> "SessionSettings":
        """The settings the command line's flags ask for (--device, --threads, --max-chunk-mb,
        --limit NAME=VALUE, --no-verify, --allow-external-data, --seed); errors name the flags."""
        limits = Limits.parse(limit)
        if max_chunk_mb is not None and not 0 < max_chunk_mb < 2**40:  # NaN fails the comparison too
            raise InputError(f"--max-chunk-mb must be > 0 and finite, got {max_chunk_mb}")
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        if seed is not None:
            int_in_range("--seed", seed, 0, MAX_SEED, "2**64 - 1")
        return cls(device=device, seed=seed, threads=threads, max_chunk_bytes=None if max_chunk_mb is None else max(1, int(max_chunk_mb * 2**20)),
                   limits=limits, verify=not no_verify, allow_external_data=allow_external_data)
