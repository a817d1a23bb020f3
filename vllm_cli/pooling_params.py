"""PoolingParams: what one embedding request asks of the pooler (vLLM's name and fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolingParams:
    dimensions: int | None = None  # matryoshka truncation (checked against the model by the engine)
    normalize: bool | None = None  # None: as the model's pooling config says

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
