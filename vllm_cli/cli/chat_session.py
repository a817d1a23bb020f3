"""The conversation `vllm-cli chat` keeps and the slash commands that edit it.

No I/O and no engine here: the REPL feeds lines in and prints what comes back, so this logic
is tested directly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from vllm_cli.sampling_params import SamplingParams

# Sampling for a chat when the model's own generation defaults are unknown: warm enough to
# read naturally, cut off the long tail; no max_tokens (replies may run to the end of the
# context: Ctrl-C stops one).
DEFAULT_PARAMS: dict = {"temperature": 0.7, "top_p": 0.95}

# What /params may set: sampling fields that both the engine and OpenAI-compatible servers
# (vLLM's extras: top_k, min_p, repetition_penalty) understand.
PARAM_NAMES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "min_tokens",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
)

ROLES = ("system", "user", "assistant")

HELP_INTRO = """\
Type a message and press Enter to send it; Esc then Enter (or a paste) adds a line break. \
Ctrl-C stops a reply (the session goes on), Ctrl-D or /exit leaves. A message that starts with // sends it \
with one slash."""

# Every slash command and what it does: /help renders this table, wrapped at the terminal's width.
COMMANDS: list[tuple[str, str]] = [
    ("/retry", "generate the last reply again (it is replaced)"),
    ("/undo", "remove the last message and its reply"),
    ("/edit", "write the next message in $VISUAL or $EDITOR (else vi or nano); an empty file sends nothing"),
    (
        "/copy",
        "copy the last reply to the clipboard (pyperclip, wl-copy, xclip, xsel or pbcopy), "
        "else write it to a file and print its path",
    ),
    ("/system TEXT", "replace the system message (/system alone removes it)"),
    ("/reset", "clear the conversation, keep the system message"),
    ("/history", "show the messages"),
    ("/save FILE", "write the messages to FILE as JSON (OpenAI's `messages` shape)"),
    ("/load FILE", "read messages from such a file (replaces the conversation)"),
    (
        "/params [k=v ...]",
        "show or set sampling for the next turns, e.g. temperature=0.2 max_tokens=256 "
        "(k=null goes back to the default); names: " + ", ".join(PARAM_NAMES),
    ),
    (
        "/think on|off",
        "ask the chat template to enable or disable thinking (chat_template_kwargs "
        "enable_thinking); /think alone shows it. Reasoning the server returns is shown dimmed",
    ),
    ("/markdown on|off", "render replies as Markdown in the terminal (--no-markdown starts with it off)"),
    ("/tokens", "how much of the model's context the conversation uses"),
    ("/model", "the model and where it runs (in this process or which server)"),
    ("/help", "this text"),
    ("/exit", "leave"),
]


class CommandError(ValueError):
    """A slash command that cannot run as typed: reported, and the session goes on."""


@dataclass
class CommandResult:
    output: str = ""  # what the user asked to see (stdout)
    note: str = ""  # a confirmation (stderr: keeps piped stdout to replies and requested output)
    exit: bool = False
    # What needs the terminal or the backend, for the REPL to do: retry, edit, copy, markdown, tokens, model, help.
    action: str | None = None
    value: object = None  # the action's argument: /copy the reply, /markdown on or off


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # user/assistant messages, in order
    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    think: bool | None = None  # /think: the template's enable_thinking; None: the template's default

    @property
    def template_kwargs(self) -> dict | None:
        """chat_template_kwargs for every turn (in-process and in the body sent to a server)."""
        return None if self.think is None else {"enable_thinking": self.think}

    def last_reply(self) -> str | None:
        return self.turns[-1]["content"] if self.turns and self.turns[-1]["role"] == "assistant" else None

    @property
    def messages(self) -> list[dict]:
        """The whole list every turn sends: the system message first, then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def set_messages(self, messages: list[dict]) -> None:
        self.system = None
        if messages and messages[0]["role"] == "system":
            self.system, messages = messages[0]["content"], messages[1:]
        self.turns = [dict(m) for m in messages]

    def set_params(self, assignments: list[str]) -> None:
        """Apply `name=value` items (values as JSON, else plain strings), all or none."""
        values = {}
        for item in assignments:
            name, eq, text = item.partition("=")
            if not eq or not name.strip():
                raise CommandError(f"expected name=value, got {item!r}")
            try:
                values[name.strip().replace("-", "_")] = json.loads(text)
            except json.JSONDecodeError:
                values[name.strip().replace("-", "_")] = text  # e.g. stop=END
        self.update_params(values)

    def update_params(self, values: dict) -> None:
        """Set sampling parameters (None: back to the default), all or none."""
        params = dict(self.params)
        for name, value in values.items():
            if name not in PARAM_NAMES:
                raise CommandError(f"unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}")
            if value is not None:
                params[name] = value
            elif name in DEFAULT_PARAMS:
                params[name] = DEFAULT_PARAMS[name]
            else:
                params.pop(name, None)
        try:
            SamplingParams(**params)  # the engine's own validation, named errors included
        except (TypeError, ValueError) as e:
            raise CommandError(str(e)) from None
        self.params = params


def parse_switch(command: str, arg: str) -> bool:
    """on/off (also true/false, yes/no, 1/0) as a bool."""
    value = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if arg.lower() not in value:
        raise CommandError(f"usage: /{command} on|off")
    return value[arg.lower()]


def format_params(params: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "(defaults)"


def format_history(messages: list[dict]) -> str:
    if not messages:
        return "(no messages)"
    return "\n".join(f"[{m['role']}] {m['content']}" for m in messages)


def load_messages(path: str) -> list[dict]:
    """A JSON list of {"role", "content"} messages, or an object with such a `messages` list."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CommandError(f"{path} is not JSON: {e}") from None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list):
        raise CommandError(f"{path}: expected a list of messages")
    messages = []
    for i, m in enumerate(data):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise CommandError(f"{path}: message {i} needs a role ({'/'.join(ROLES)}) and string content")
        if m["role"] == "system" and i > 0:
            raise CommandError(f"{path}: message {i}: only the first message may be a system message")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def run_command(conv: Conversation, line: str) -> CommandResult:
    """Run one slash command line ("/name args") against the conversation."""
    name, _, arg = line.strip()[1:].partition(" ")
    arg = arg.strip()
    if name in ("exit", "quit"):
        return CommandResult(exit=True)
    if name in ("help", "model", "tokens", "edit"):
        return CommandResult(action=name)
    if name == "retry":
        reply = conv.last_reply()
        if reply is None:
            raise CommandError("no reply to generate again")
        conv.turns.pop()
        return CommandResult(action="retry", value=reply)  # the old reply comes back if the new one fails
    if name == "undo":
        if not conv.turns:
            raise CommandError("nothing to undo")
        removed = conv.turns.pop()
        if removed["role"] == "assistant" and conv.turns and conv.turns[-1]["role"] == "user":
            removed = conv.turns.pop()
        preview = removed["content"] if len(removed["content"]) <= 40 else removed["content"][:40] + "..."
        return CommandResult(note=f"Removed the last exchange ({preview!r}).")
    if name == "copy":
        reply = conv.last_reply()
        if reply is None:
            raise CommandError("no reply to copy yet")
        return CommandResult(action="copy", value=reply)
    if name == "markdown":
        if not arg:
            raise CommandError("usage: /markdown on|off")
        return CommandResult(action="markdown", value=parse_switch(name, arg))
    if name == "think":
        if arg:
            conv.think = parse_switch(name, arg)
            return CommandResult(note=f"Thinking {'on' if conv.think else 'off'} (enable_thinking={conv.think}).")
        state = "the template's default" if conv.think is None else ("on" if conv.think else "off")
        return CommandResult(output=f"Thinking: {state}")
    if name == "system":
        conv.system = arg or None
        return CommandResult(note="System message set." if arg else "System message removed.")
    if name == "reset":
        conv.turns.clear()
        return CommandResult(note="Conversation cleared" + (" (system message kept)." if conv.system else "."))
    if name == "history":
        return CommandResult(output=format_history(conv.messages))
    if name in ("save", "load"):
        if not arg:
            raise CommandError(f"usage: /{name} FILE")
        path = os.path.expanduser(arg)
        if name == "load":
            conv.set_messages(load_messages(path))
            return CommandResult(note=f"Loaded {len(conv.messages)} messages from {arg}.")
        messages = conv.messages
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(messages, f, indent=2, ensure_ascii=False)
                f.write("\n")
        except OSError as e:
            raise CommandError(f"cannot write {arg}: {e.strerror or e}") from None
        return CommandResult(note=f"Saved {len(messages)} messages to {arg}.")
    if name == "params":
        if arg:
            conv.set_params(re.split(r"\s+(?=[\w-]+=)", arg))  # values may hold spaces: stop=["a b"]
            return CommandResult(note=f"Sampling: {format_params(conv.params)}")
        return CommandResult(output=format_params(conv.params))
    raise CommandError(f"unknown command /{name}; /help lists them")
