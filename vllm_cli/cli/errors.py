"""Turning expected failures into one readable line on stderr and exit status 1."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from vllm_cli.distributed import WorkerFailedError

# Bad flags or input (ValueError), a model or file that is not there (OSError, including
# ModelNotFoundError): the user can act on the message, a traceback would only hide it.
# A tensor-parallel worker that died: the message names the rank and its error.
EXPECTED_ERRORS = (ValueError, OSError, WorkerFailedError)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside: an expected failure (or Ctrl-C) exits with one line on stderr instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except EXPECTED_ERRORS as e:
        print(f"Error: {one_line(e)}", file=sys.stderr)
        raise typer.Exit(1) from None
