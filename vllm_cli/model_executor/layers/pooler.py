"""Pooling for embedding models (`--runner pooling`): which hidden states make one vector, and how.

The pooling config comes from a sentence-transformers directory when there is one
(`modules.json` names the Pooling module's folder, whose `config.json` says CLS / mean /
last token; a Normalize module means L2-normalized output), else vLLM's default for a decoder
model: the last token, normalized. Matryoshka models (`is_matryoshka` or `matryoshka_dimensions`
in config.json, as vLLM reads them) may be asked for fewer dimensions: truncated, then normalized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

POOLING_TYPES = ("LAST", "MEAN", "CLS")
# sentence-transformers' Pooling config: one boolean key per mode (before v6), or "pooling_mode" (v6).
_ST_MODE_NAMES = {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST"}
_ST_MODES = (
    ("pooling_mode_cls_token", "CLS"),
    ("pooling_mode_mean_tokens", "MEAN"),
    ("pooling_mode_lasttoken", "LAST"),
)


@dataclass(frozen=True)
class PoolingConfig:
    pooling_type: str = "LAST"
    normalize: bool = True
    hidden_size: int = 0
    matryoshka: bool = False  # truncation to fewer dimensions is meaningful
    matryoshka_dimensions: tuple[int, ...] | None = None  # when the model lists them: only these
    source: str = "default for a decoder model"

    def check_dimensions(self, dimensions: int) -> None:
        """ValueError unless the model can give `dimensions`-long embeddings."""
        if not self.matryoshka:
            raise ValueError(
                "this model does not support matryoshka representation (no is_matryoshka / matryoshka_dimensions "
                "in its config.json): changing the output dimensions would give poor embeddings"
            )
        if not 1 <= dimensions <= self.hidden_size:
            raise ValueError(f"dimensions must be between 1 and the model's hidden size {self.hidden_size}")
        if self.matryoshka_dimensions and dimensions not in self.matryoshka_dimensions:
            raise ValueError(f"this model supports dimensions {list(self.matryoshka_dimensions)}, got {dimensions}")


def sentence_transformers_pooling_dir(model_dir: Path) -> Path | None:
    """The Pooling module's folder of a sentence-transformers model directory, or None."""
    for module in _st_modules(model_dir):
        if _is_module(module, "Pooling"):
            return model_dir / str(module.get("path", ""))
    return model_dir / "1_Pooling" if (model_dir / "1_Pooling" / "config.json").is_file() else None


def load_pooling_config(model_dir: Path | None, hf_config: Any) -> PoolingConfig:
    """The model's pooling: sentence-transformers' config when present, else last token, normalized."""
    hidden_size = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "n_embd", 0) or 0)
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    matryoshka_dims = tuple(int(d) for d in dims) if isinstance(dims, (list, tuple)) and dims else None
    matryoshka = bool(getattr(hf_config, "is_matryoshka", False)) or matryoshka_dims is not None
    common = {"hidden_size": hidden_size, "matryoshka": matryoshka, "matryoshka_dimensions": matryoshka_dims}
    pooling_dir = sentence_transformers_pooling_dir(model_dir) if model_dir is not None else None
    if pooling_dir is None:
        return PoolingConfig(**common)  # type: ignore[arg-type]
    st = _read_json(pooling_dir / "config.json") or {}
    modes = [kind for key, kind in _ST_MODES if st.get(key)]
    if isinstance(st.get("pooling_mode"), str):
        modes = [_ST_MODE_NAMES.get(st["pooling_mode"], st["pooling_mode"])]
    if not modes or modes[0] not in POOLING_TYPES:
        raise ValueError(
            f"{pooling_dir / 'config.json'}: no pooling mode this server supports ({', '.join(POOLING_TYPES)})"
        )
    if len(modes) > 1:
        raise ValueError(f"{pooling_dir / 'config.json'}: several pooling modes ({', '.join(modes)}); one is supported")
    normalize = model_dir is not None and any(_is_module(m, "Normalize") for m in _st_modules(model_dir))
    return PoolingConfig(modes[0], normalize, source="sentence-transformers", **common)  # type: ignore[arg-type]


def _st_modules(model_dir: Path) -> list[dict]:
    modules = _read_json(model_dir / "modules.json")
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def _is_module(module: dict, class_name: str) -> bool:
    """sentence_transformers.models.Pooling (before v6), ....modules.pooling.Pooling (v6)."""
    return str(module.get("type", "")).rsplit(".", 1)[-1] == class_name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finish_embedding(pooled: torch.Tensor, normalize: bool, dimensions: int | None) -> list[float]:
    """One pooled float32 vector -> the embedding: truncated (matryoshka), then L2-normalized."""
    if dimensions is not None:
        pooled = pooled[:dimensions]
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.tolist()
