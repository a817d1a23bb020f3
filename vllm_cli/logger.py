"""One logging setup for every entry point: `INFO 11-25 10:42:01 [engine] message`."""

from __future__ import annotations

import logging
import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")  # --log-level
_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"
_configured = False


def init_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        root = logging.getLogger("vllm_cli")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%m-%d %H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("VLLM_CLI_LOG_LEVEL", "INFO").upper())
        root.propagate = False
        _configured = True
    return logging.getLogger(name if name.startswith("vllm_cli") else f"vllm_cli.{name}")


def set_log_level(level: str) -> None:
    init_logger("vllm_cli")
    logging.getLogger("vllm_cli").setLevel(level.upper())
