"""The I/O side of `vllm-cli chat`: streaming one turn (Markdown rendered live with rich on a
terminal), the prompt_toolkit REPL, piped input, and the commands that need the terminal or the
backend (/retry, /edit, /copy, /tokens, /model, /markdown, /help).

Replies (and what /history and /help print) go to `out`; everything else (stats, notes,
errors) goes to `err`, so piped stdout holds the replies alone.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from vllm_cli.cli.chat_backends import Backend, BackendError, ReasoningText, TurnStats
from vllm_cli.cli.chat_session import COMMANDS, HELP_INTRO, CommandError, CommandResult, Conversation, run_command

PROMPT = "> "


@dataclass
class TurnResult:
    text: str
    stats: TurnStats
    interrupted: bool = False
    error: str | None = None


def _dim(text: str, stream: TextIO) -> str:
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


def stats_line(
    stats: TurnStats, seconds: float, interrupted: bool, first_at: float | None = None, first_tokens: int = 0
) -> str:
    """The dim line after a reply: tokens, the decode speed and the time to the first token.

    `first_at`: seconds from the request to the reply's first delta, when `first_tokens` tokens had
    been counted. The speed is that of the tokens after it ((n - first_tokens) / (seconds - first_at),
    what llama.cpp's eval rate and vLLM's TPOT measure), so the prompt's prefill does not dilute it;
    with a single delta, tokens over the whole time."""
    n = stats.completion_tokens
    if first_at is not None and n > first_tokens and seconds > first_at:
        rate = f"{(n - first_tokens) / (seconds - first_at):.1f} tokens/s"
    else:
        rate = f"{n / seconds:.1f} tokens/s" if seconds > 0 else "-"
    parts = [f"{n} token{'s' if n != 1 else ''}", rate]
    if first_at is not None:
        parts.append(f"first token {first_at:.2f} s")
    if interrupted:
        parts.append("stopped")
    elif stats.finish_reason == "length":
        parts.append("cut at the token limit")
    return f"[{', '.join(parts)}]"


class _Lines:
    """Rendered lines (rich segments) as a renderable, to print or to show in a Live."""

    def __init__(self, lines: list[list[Segment]]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from _without_padding(line)
            yield Segment.line()


def _without_padding(line: list[Segment]) -> list[Segment]:
    """A rendered line less the plain spaces that pad it to the width (they would come along when
    the reply is selected and copied from the terminal); a code block's background stays."""
    line = list(line)
    while line and (line[-1].style is None or line[-1].style.bgcolor is None):
        text = line[-1].text.rstrip(" ")
        if text:
            line[-1] = Segment(text, line[-1].style, line[-1].control)
            break
        line.pop()
    return line


class MarkdownStream:
    """A reply rendered as Markdown while it streams. The whole text is rendered again at most
    every `interval` seconds; lines that scroll above the last screenful are printed for good
    and leave the Live area, so a reply taller than the terminal neither flickers nor repeats."""

    def __init__(self, console: Console, interval: float = 0.1) -> None:
        self.console, self.interval = console, interval
        self.live = Live(console=console, auto_refresh=False, vertical_overflow="visible")
        self.printed = 0  # rendered lines already printed above the Live area
        self.last = 0.0
        self.live.start()

    def update(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        lines = self.console.render_lines(Markdown(text), self.console.options, pad=False)
        keep = max(self.console.height - 2, 1)
        if final:
            keep = 0  # all printed for good: the Live area pads its lines to the widest
        if len(lines) - self.printed > keep:
            self.live.update(_Lines([]), refresh=True)  # cleared first, or the print would draw it again
            self.live.console.print(_Lines(lines[self.printed : len(lines) - keep]))
            self.printed = len(lines) - keep
        self.live.update(_Lines(lines[self.printed :]), refresh=True)

    def stop(self, text: str) -> None:
        try:
            self.update(text, final=True)
        finally:
            self.live.stop()


class ChatRunner:
    """Sends the conversation, streams the reply to `out`, records it in the conversation."""

    def __init__(
        self,
        backend: Backend,
        conv: Conversation,
        out: TextIO,
        err: TextIO,
        show_stats: bool = True,
        markdown: bool = True,
    ) -> None:
        self.backend, self.conv, self.out, self.err, self.show_stats = backend, conv, out, err, show_stats
        self.markdown = markdown  # on a terminal only: piped stdout keeps the reply's own text

    def console(self) -> Console:
        return Console(file=self.out, highlight=False)

    def note(self, text: str) -> None:
        self.out.flush()
        print(text, file=self.err, flush=True)

    def error(self, text: str) -> None:
        self.note(f"Error: {text}")

    async def turn(self, user_text: str, interruptible: bool = False) -> TurnResult:
        """One user turn. With `interruptible`, Ctrl-C (SIGINT) stops the reply and keeps what
        came so far; the session goes on."""
        self.conv.add("user", user_text)
        return await self.reply(interruptible)

    async def reply(self, interruptible: bool = False, previous: str | None = None) -> TurnResult:
        """Generate the reply to the conversation, which ends with a user message. No reply (an
        error): `previous` (/retry's old reply) goes back, or else the user message is dropped."""
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
        elif previous is not None:
            self.conv.add("assistant", previous)
        else:
            self.conv.turns.pop()  # no reply: drop the question, or the roles stop alternating
        return result

    async def _stream(self, messages: list[dict]) -> TurnResult:
        stats = TurnStats()
        parts: list[str] = []
        start = time.perf_counter()
        result = TurnResult("", stats)
        params = dict(self.conv.params)
        if self.conv.template_kwargs:
            params["chat_template_kwargs"] = self.conv.template_kwargs
        rendered: MarkdownStream | None = None
        thinking = False  # reasoning is being written (dimmed) and needs a line break before the reply
        first_at: float | None = None  # seconds to the first delta (reasoning or reply), for the stats line
        first_tokens = 0
        try:
            async for delta in self.backend.stream(messages, params, stats):
                if first_at is None:
                    first_at, first_tokens = time.perf_counter() - start, stats.completion_tokens
                if isinstance(delta, ReasoningText):
                    # Reasoning comes before the reply; piped stdout keeps to the replies.
                    if rendered is None and not parts and self.out.isatty():
                        self.out.write(_dim(delta.lstrip("\n") if not thinking else delta, self.out))
                        self.out.flush()
                        thinking = True
                    continue
                if not parts:  # some templates leave the reply's first line break to the model
                    delta = delta.lstrip("\n")
                    if not delta:
                        continue
                    if thinking:
                        self.out.write("\n\n")
                    if self.markdown and self.out.isatty():
                        rendered = MarkdownStream(self.console())
                parts.append(delta)
                if rendered is not None:
                    rendered.update("".join(parts))
                else:
                    self.out.write(delta)
                    self.out.flush()
        except asyncio.CancelledError:  # Ctrl-C: the stream is closed on the way out, aborting the request
            result.interrupted = True
        except BackendError as e:
            result.error = str(e)
        finally:
            if rendered is not None:
                rendered.stop("".join(parts))
        result.text = "".join(parts)
        if (result.text or thinking) and not result.text.endswith("\n") and rendered is None:
            self.out.write("\n")
        if result.error:
            self.error(result.error)
        elif self.show_stats:
            line = stats_line(stats, time.perf_counter() - start, result.interrupted, first_at, first_tokens)
            self.note(_dim(line, self.err))
        return result

    async def command(self, line: str, interruptible: bool = False) -> CommandResult | None:
        """Run a slash command and print what it says; None when it failed."""
        try:
            result = run_command(self.conv, line)
            if result.output:
                print(result.output, file=self.out, flush=True)
            if result.note:
                self.note(result.note)
            if result.action is not None and not await self._act(result, interruptible):
                return None
        except CommandError as e:
            self.error(str(e))
            return None
        return result

    async def _act(self, result: CommandResult, interruptible: bool) -> bool:
        """The part of a command that needs the terminal or the backend; False when it failed."""
        action = result.action
        if action == "help":
            self.print_help()
        elif action == "model":
            print("\n".join(self.backend.details), file=self.out, flush=True)
        elif action == "markdown":
            self.markdown = bool(result.value)
            plain = "" if self.out.isatty() else " (stdout is not a terminal: replies stay plain text)"
            self.note(f"Markdown rendering {'on' if self.markdown else 'off'}{plain}.")
        elif action == "copy":
            self.note(copy_text(str(result.value)))
        elif action == "tokens":
            try:
                used, total = await self.backend.context_usage(self.conv.messages, self.conv.template_kwargs)
            except BackendError as e:
                raise CommandError(str(e)) from None
            print(context_line(used, total, len(self.conv.messages)), file=self.out, flush=True)
        elif action == "retry":
            return not (await self.reply(interruptible, previous=str(result.value))).error
        elif action == "edit":
            text = edit_message()
            if not text:
                self.note("Empty message: nothing sent.")
            else:
                return not (await self.turn(text, interruptible)).error
        return True

    def print_help(self) -> None:
        """The commands as a two-column table, wrapped at word boundaries to the terminal's width."""
        console = self.console()
        console.print(Text(HELP_INTRO), "")
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        for command, description in COMMANDS:
            table.add_row(Text(command), Text(description))  # Text: "[k=v ...]" is no markup
        console.print(table)
        self.out.flush()


def context_line(used: int | None, total: int | None, messages: int) -> str:
    """/tokens: how much of the context the conversation takes."""
    if used is None:
        return "Token count unknown: the server has no /tokenize and there is no reply yet."
    count = f"{used} tokens" + (f" of {total} ({100 * used / total:.1f}% of the context)" if total else "")
    return f"{count}, {messages} message{'s' if messages != 1 else ''}"


# Clipboard commands tried in order when pyperclip is not installed: Wayland, X11 (two tools), macOS.
CLIPBOARD_COMMANDS = (["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"], ["pbcopy"])


def _clipboard_tools() -> Iterator[tuple[str, Callable[[str], None]]]:
    try:
        import pyperclip
    except ImportError:
        pass
    else:
        yield "pyperclip", pyperclip.copy
    for command in CLIPBOARD_COMMANDS:
        path = shutil.which(command[0])
        if path:
            yield command[0], functools.partial(_pipe_to, [path, *command[1:]])


def _pipe_to(argv: list[str], text: str) -> None:
    subprocess.run(argv, input=text, text=True, check=True, timeout=5, capture_output=True)


def copied_reply_path() -> str:
    return os.path.join(os.path.dirname(history_path()), "last_reply.md")


def copy_text(text: str) -> str:
    """Copy to the clipboard, else write to a file; says where the text went."""
    for name, copy in _clipboard_tools():
        try:
            copy(text)
            return f"Copied the last reply to the clipboard ({name})."
        except Exception:  # no display, a tool that fails: try the next one, then the file
            continue
    path = copied_reply_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise CommandError(f"no clipboard, and cannot write {path}: {e.strerror or e}") from None
    return f"No clipboard found (install pyperclip, wl-copy, xclip or xsel): the last reply is in {path}"


# Editors tried when neither $VISUAL nor $EDITOR is set, as git does.
FALLBACK_EDITORS = ("vi", "nano")


def find_editor() -> list[str]:
    for variable in ("VISUAL", "EDITOR"):
        if os.environ.get(variable, "").strip():
            return shlex.split(os.environ[variable])
    for name in FALLBACK_EDITORS:
        if shutil.which(name):
            return [name]
    raise CommandError(f"no editor found: set $EDITOR (none of {', '.join(FALLBACK_EDITORS)} is installed)")


def edit_message() -> str:
    """/edit: the next message, written in the user's editor; "" when they leave it empty."""
    editor = find_editor()
    fd, path = tempfile.mkstemp(prefix="vllm-cli-message-", suffix=".md")
    os.close(fd)
    try:
        try:
            status = subprocess.run([*editor, path]).returncode
        except OSError as e:
            raise CommandError(f"cannot run the editor {editor[0]!r}: {e.strerror or e}") from None
        if status != 0:
            raise CommandError(f"the editor {editor[0]!r} exited with status {status}: nothing sent")
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    finally:
        os.unlink(path)


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
            result = await runner.command(line, interruptible=True)
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
            result = await runner.command(text.strip())
            if result is None:
                return False
            if result.exit:
                return True
        elif (await runner.turn(text.removeprefix("/"))).error:
            return False
    return True
