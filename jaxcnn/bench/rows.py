"""The typed row of a benchmark report: one model program's description and measured speed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MEASURES = ("train", "infer")  # what a row times: the engine's train step, or inference (apply, eval mode)


@dataclass(frozen=True)
class BenchRow:
    """One (model, input, batch, dtype, measure) program of ``jaxcnn bench``; JSON keys are the field names."""

    model: str
    input: str  # "HxWxC"
    batch: int
    dtype: str
    measure: str  # one of MEASURES
    conv_impl: str | None  # the requested lowering ...
    lowerings: list[str]  # ... and the ones that ran
    compile_options: str  # the XLA option set used (the tuned choice under "auto")
    tune_s: float  # seconds spent choosing compile_options (0 when named or cached)
    tune: dict[str, Any]  # the choice's record (candidates, times, accuracy check)
    macs_per_image: int  # analytic, from jaxcnn.summary
    compile_s: float
    first_call_s: float  # compile + one call: what a short run pays before its first step
    step_ms_median: float
    step_ms_low: float
    step_ms_high: float
    reps: int
    calls_per_rep: int
    images_per_s: float  # batch / median step
    achieved_flops: float  # FLOPs per call (2 x MACs x batch, x3 for training) / median step
    max_other_load: float  # most cores other processes used during a kept repetition
    disturbed_reps: int
    redone_reps: int
    device_memory_peak_bytes: int | None  # GPU/TPU only
    percent_of_peak: float | None = None  # achieved_flops over the run's measured peak (set by bench.run)

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> BenchRow:
        """The row of a decoded report (``to_dict``'s output); ValueError naming a missing field."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in value and n != "percent_of_peak"]
        if missing:
            raise ValueError(f"benchmark row lacks {', '.join(missing)}: it was not written by this jaxcnn bench")
        return cls(**{n: value[n] for n in names if n in value})
