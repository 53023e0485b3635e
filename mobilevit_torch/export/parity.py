"""How close an exported file's logits are to PyTorch's, and what each precision must reach.

Float exports are held to a maximum absolute logit difference; quantised ones change every logit a
little by design, so for them the measure is top-1 agreement with PyTorch on real images (the
class an app would show), reported against an aim rather than enforced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Max |logit difference| allowed against PyTorch (float32 arithmetic reorders sums; float16 weights round).
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2}
# Top-1 agreement with PyTorch that a quantised export should reach on real images.
AGREEMENT_AIMS: dict[str, float] = {"int8_dynamic": 0.99, "int8_mixed": 0.97, "int8": 0.97}


@dataclass(frozen=True)
class ParityReport:
    """The exported file against PyTorch on the same preprocessed images."""

    precision: str
    images: int
    real_images: bool
    max_abs_diff: float
    top1_agreement: float
    tolerance: float | None
    aim: float | None

    @property
    def passed(self) -> bool:
        """Within the tolerance (float precisions); quantised precisions are reported, never failed."""
        return self.tolerance is None or self.max_abs_diff <= self.tolerance

    @property
    def meets_aim(self) -> bool:
        return self.aim is None or self.top1_agreement >= self.aim

    def summary(self) -> str:
        source = "real images" if self.real_images else "random inputs"
        diff = f"max |Δ| {self.max_abs_diff:.2e}"
        if self.tolerance is not None:
            diff += f" (≤ {self.tolerance:.0e} {'ok' if self.passed else 'FAILED'})"
        agree = f"top-1 agreement {self.top1_agreement:.1%}"
        if self.aim is not None:
            agree += f" (aim ≥ {self.aim:.0%}{'' if self.meets_aim else ', BELOW'})"
        return f"{diff}, {agree} on {self.images} {source}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def compare(reference: np.ndarray, exported: np.ndarray, *, precision: str, real_images: bool) -> ParityReport:
    """Compare ``[N, classes]`` logits from PyTorch (``reference``) and from the exported file."""
    if reference.shape != exported.shape:
        raise ValueError(f"logits of shape {exported.shape} from the export, {reference.shape} from PyTorch")
    return ParityReport(
        precision=precision,
        images=int(reference.shape[0]),
        real_images=real_images,
        max_abs_diff=float(np.abs(reference.astype(np.float64) - exported.astype(np.float64)).max()),
        top1_agreement=float((reference.argmax(axis=1) == exported.argmax(axis=1)).mean()),
        tolerance=TOLERANCES.get(precision),
        aim=AGREEMENT_AIMS.get(precision),
    )
