"""Turning expected failures into one readable line on stderr and exit status 1."""

from __future__ import annotations

import contextlib
import sys

import typer


@contextlib.contextmanager
def user_errors():
    """Model not found, bad flag values, unsupported architectures, ...: no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ValueError, OSError, RuntimeError) as e:
        if type(e).__name__ == "ModelNotFoundError" or isinstance(e, (ValueError, OSError)) or "CUDA" in str(e):
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"Error: {message}", file=sys.stderr)
            raise typer.Exit(1) from None
        raise
