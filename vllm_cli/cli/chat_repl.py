"""The I/O side of `vllm-cli chat`: streaming one turn, the prompt_toolkit REPL, piped input.

Replies (and what /history and /help print) go to `out`; everything else (stats, notes,
errors) goes to `err`, so piped stdout holds the replies alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from vllm_cli.cli.chat_backends import Backend, BackendError, TurnStats
from vllm_cli.cli.chat_session import CommandError, CommandResult, Conversation, run_command

PROMPT = "> "


@dataclass
class TurnResult:
    text: str
    stats: TurnStats
    interrupted: bool = False
    error: str | None = None


def _dim(text: str, stream: TextIO) -> str:
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


def stats_line(stats: TurnStats, seconds: float, interrupted: bool) -> str:
    n = stats.completion_tokens
    parts = [f"{n} token{'s' if n != 1 else ''}", f"{n / seconds:.1f} tokens/s" if seconds > 0 else "-"]
    if interrupted:
        parts.append("stopped")
    elif stats.finish_reason == "length":
        parts.append("cut at the token limit")
    return f"[{', '.join(parts)}]"


class ChatRunner:
    """Sends the conversation, streams the reply to `out`, records it in the conversation."""

    def __init__(self, backend: Backend, conv: Conversation, out: TextIO, err: TextIO, show_stats: bool = True) -> None:
        self.backend, self.conv, self.out, self.err, self.show_stats = backend, conv, out, err, show_stats

    def note(self, text: str) -> None:
        self.out.flush()
        print(text, file=self.err, flush=True)

    def error(self, text: str) -> None:
        self.note(f"Error: {text}")

    async def turn(self, user_text: str, interruptible: bool = False) -> TurnResult:
        """One user turn. With `interruptible`, Ctrl-C (SIGINT) stops the reply and keeps what
        came so far; the session goes on."""
        self.conv.add("user", user_text)
        task = asyncio.ensure_future(self._stream(self.conv.messages))
        if interruptible:
            _on_sigint(task.cancel)
        try:
            result = await task
        finally:
            if interruptible:
                _on_sigint(None)
        if result.text:
            self.conv.add("assistant", result.text)
        else:
            self.conv.turns.pop()  # no reply: drop the question, or the roles stop alternating
        return result

    async def _stream(self, messages: list[dict]) -> TurnResult:
        stats = TurnStats()
        parts: list[str] = []
        start = time.perf_counter()
        result = TurnResult("", stats)
        try:
            async for delta in self.backend.stream(messages, dict(self.conv.params), stats):
                if not parts:  # some templates leave the reply's first line break to the model
                    delta = delta.lstrip("\n")
                    if not delta:
                        continue
                parts.append(delta)
                self.out.write(delta)
                self.out.flush()
        except asyncio.CancelledError:  # Ctrl-C: the stream is closed on the way out, aborting the request
            result.interrupted = True
        except BackendError as e:
            result.error = str(e)
        result.text = "".join(parts)
        if result.text and not result.text.endswith("\n"):
            self.out.write("\n")
        if result.error:
            self.error(result.error)
        elif self.show_stats:
            self.note(_dim(stats_line(stats, time.perf_counter() - start, result.interrupted), self.err))
        return result

    def command(self, line: str) -> CommandResult | None:
        """Run a slash command and print what it says; None when it failed."""
        try:
            result = run_command(self.conv, line)
        except CommandError as e:
            self.error(str(e))
            return None
        if result.output:
            print(result.output, file=self.out, flush=True)
        if result.note:
            self.note(result.note)
        return result


def _on_sigint(callback: Callable[[], object] | None) -> None:
    """Route SIGINT to `callback` while a reply streams (None: back to the default)."""
    try:
        loop = asyncio.get_running_loop()
        if callback is None:
            loop.remove_signal_handler(signal.SIGINT)
        else:
            loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        pass


def history_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "vllm-cli", "chat_history")


def make_prompt_session(**kwargs: Any) -> PromptSession[str]:
    """A PromptSession with persistent history and Esc-Enter for a line break."""
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    if "history" not in kwargs:
        path = history_path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            kwargs["history"] = FileHistory(path)
        except OSError:  # e.g. a read-only home: history for this session only
            kwargs["history"] = InMemoryHistory()
    return PromptSession(key_bindings=bindings, **kwargs)


def _is_command(line: str) -> bool:
    return line.startswith("/") and not line.startswith("//")  # "//x" sends "/x"


async def interactive(runner: ChatRunner, session: PromptSession[str]) -> None:
    """The REPL, until Ctrl-D or /exit; a failed turn or command is reported and the session goes on."""
    while True:
        try:
            line = await session.prompt_async(PROMPT)
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as a shell does
            continue
        except EOFError:
            return
        if not line.strip():
            continue
        if _is_command(line):
            result = runner.command(line)
            if result is not None and result.exit:
                return
        else:
            await runner.turn(line.removeprefix("/"), interruptible=True)


async def scripted(runner: ChatRunner, inputs: Iterable[str], commands: bool = True) -> bool:
    """Non-interactive: each input a user turn (or, with `commands`, a slash command). Stops at
    the first failure and returns False, so that a script sees it in the exit status."""
    for text in inputs:
        if not text.strip():
            continue
        if not commands:
            if (await runner.turn(text)).error:
                return False
        elif _is_command(text):
            result = runner.command(text.strip())
            if result is None:
                return False
            if result.exit:
                return True
        elif (await runner.turn(text.removeprefix("/"))).error:
            return False
    return True
