"""One registry for the pluggable parsers (tool-call and reasoning): a decorator registers a class
under its names, the built-ins load on first look-up, and a plugin file (vLLM's
`--tool-parser-plugin`) registers more by importing it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound=type[Any])


class ParserRegistry:
    """Subclasses set `kind` (for messages), `package` (whose import registers the built-ins) and
    their own `_parsers` dict."""

    kind: ClassVar[str]
    package: ClassVar[str]
    _parsers: ClassVar[dict[str, type[Any]]]

    @classmethod
    def register_module(cls, name: str | list[str] | None = None, force: bool = True) -> Callable[[C], C]:
        """Class decorator: register a parser under `name` (or names; default: its `name` attribute)."""

        def register(parser_cls: C) -> C:
            names = [name] if isinstance(name, str) else list(name or [parser_cls.name])
            if not names or not all(names):
                raise ValueError(f"{parser_cls.__name__} needs a name to be registered under")
            for n in names:
                if n in cls._parsers and not force:
                    raise KeyError(f"{cls.kind} {n!r} is already registered")
                cls._parsers[n] = parser_cls
            if not parser_cls.name:
                parser_cls.name = names[0]
            return parser_cls

        return register

    @classmethod
    def _get(cls, name: str) -> type[Any]:
        importlib.import_module(cls.package)  # its modules register themselves
        try:
            return cls._parsers[name]
        except KeyError:
            raise ValueError(f"unknown {cls.kind} {name!r}; known: {', '.join(cls.names())}") from None

    @classmethod
    def names(cls) -> list[str]:
        importlib.import_module(cls.package)
        return sorted(cls._parsers)

    @classmethod
    def _import_plugin(cls, path: str) -> None:
        """Load a plugin file that registers a parser with the decorator."""
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise ValueError(f"{cls.kind} plugin {path} does not exist")
        prefix = "vllm_cli_" + cls.kind.replace(" ", "_") + "_plugin_"
        module_name = prefix + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load {cls.kind} plugin {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(module_name, None)
            raise ValueError(f"{cls.kind} plugin {path} failed to load: {e}") from e
