"""`vllm-cli chat`: the conversation and its slash commands, the REPL (prompt_toolkit pipe
input and a real pseudo-terminal), piped stdin and -q end to end on a tiny model, and
--url against a real `vllm-cli serve` behind a proxy that records what the client sends.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import launch_server

from vllm_cli.cli import chat_repl
from vllm_cli.cli.chat_backends import BackendError, ReasoningText, TurnStats
from vllm_cli.cli.chat_repl import ChatRunner, interactive, make_prompt_session, scripted
from vllm_cli.cli.chat_session import COMMANDS, DEFAULT_PARAMS, HELP_INTRO, CommandError, Conversation, run_command

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "vllm_cli.cli.main"]


def _env(tmp_path, **extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(tmp_path / "xdg"),
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def _chat(tmp_path, *args, input: str = "", env: dict | None = None, timeout: float = 180):
    return subprocess.run([*CLI, "chat", *args], input=input, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=_env(tmp_path, **(env or {})))


def _expected_stdout(replies: list[str]) -> str:
    return "".join(r if r.endswith("\n") else r + "\n" for r in replies)


# ----------------------------------------------------------------- conversation and commands

def test_messages_keep_system_first_and_turns_in_order():
    conv = Conversation(system="translate to Italian")
    conv.add("user", "hello")
    conv.add("assistant", "ciao")
    assert conv.messages == [{"role": "system", "content": "translate to Italian"},
                             {"role": "user", "content": "hello"}, {"role": "assistant", "content": "ciao"}]
    assert Conversation().messages == []
    assert conv.params == DEFAULT_PARAMS


def test_system_reset_history_help_exit():
    conv = Conversation(system="old")
    conv.add("user", "hi")
    assert run_command(conv, "/system be brief").note and conv.system == "be brief"
    assert run_command(conv, "/history").output == "[system] be brief\n[user] hi"
    run_command(conv, "/reset")
    assert conv.messages == [{"role": "system", "content": "be brief"}]
    run_command(conv, "/system")
    assert conv.messages == [] and run_command(conv, "/history").output == "(no messages)"
    assert run_command(conv, "/help").action == "help"  # rendered by the REPL: see test_help_lists_every_command
    assert run_command(conv, "/exit").exit and run_command(conv, "/quit").exit
    with pytest.raises(CommandError, match="unknown command /nope"):
        run_command(conv, "/nope")


def test_save_and_load_round_trip_in_openai_shape(tmp_path):
    conv = Conversation(system="sys")
    conv.add("user", "q")
    conv.add("assistant", "a\nmultiline")
    path = tmp_path / "chat.json"
    assert "Saved 3 messages" in run_command(conv, f"/save {path}").note
    assert json.loads(path.read_text()) == conv.messages

    other = Conversation(system="replaced")
    other.add("user", "gone")
    assert "Loaded 3 messages" in run_command(other, f"/load {path}").note
    assert other.messages == conv.messages and other.system == "sys"
    # OpenAI's request body shape loads too.
    (tmp_path / "body.json").write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
    run_command(other, f"/load {tmp_path / 'body.json'}")
    assert other.messages == [{"role": "user", "content": "x"}] and other.system is None


@pytest.mark.parametrize("content, match", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('[{"role": "robot", "content": "x"}]', "needs a role"),
    ('[{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]', "only the first message"),
    ('{"messages": 3}', "expected a list"),
])
def test_load_rejects_bad_files_and_keeps_the_conversation(tmp_path, content, match):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    conv = Conversation(system="s")
    with pytest.raises(CommandError, match=match):
        run_command(conv, f"/load {path}")
    assert conv.messages == [{"role": "system", "content": "s"}]
    with pytest.raises(CommandError, match="usage: /save FILE"):
        run_command(conv, "/save")


def test_params_set_validate_and_reset():
    conv = Conversation()
    run_command(conv, "/params temperature=0.2 max_tokens=256 top-p=0.5 stop=[\"a b\", \"c\"] seed=7")
    assert conv.params == {"temperature": 0.2, "top_p": 0.5, "max_tokens": 256, "stop": ["a b", "c"], "seed": 7}
    assert run_command(conv, "/params").output == 'temperature=0.2 top_p=0.5 max_tokens=256 stop=["a b", "c"] seed=7'
    run_command(conv, "/params temperature=null max_tokens=null stop=END")
    assert conv.params == {"temperature": 0.7, "top_p": 0.5, "stop": "END", "seed": 7}
    before = dict(conv.params)
    for bad, match in [("temperature=-1", "temperature must be >= 0"), ("bogus=1", "unknown parameter 'bogus'"),
                       ("temperature", "expected name=value"), ("top_p=0.1 max_tokens=0", "max_tokens must be")]:
        with pytest.raises(CommandError, match=match):
            run_command(conv, f"/params {bad}")
        assert conv.params == before  # all or nothing


def test_retry_undo_copy_think_markdown_edit_the_conversation():
    conv = Conversation()
    for name in ("/retry", "/copy", "/undo"):
        with pytest.raises(CommandError, match="no reply|nothing to undo"):
            run_command(conv, name)
    for role, content in [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]:
        conv.add(role, content)
    assert run_command(conv, "/copy").value == "a2"
    result = run_command(conv, "/retry")
    assert (result.action, result.value) == ("retry", "a2") and conv.turns[-1] == {"role": "user", "content": "q2"}
    conv.add("assistant", "a2 again")
    assert "'q2'" in run_command(conv, "/undo").note
    assert [m["content"] for m in conv.messages] == ["q1", "a1"]
    assert conv.template_kwargs is None and run_command(conv, "/think").output == "Thinking: the template's default"
    run_command(conv, "/think off")
    assert conv.template_kwargs == {"enable_thinking": False} and run_command(conv, "/think").output == "Thinking: off"
    assert run_command(conv, "/markdown ON").value is True and run_command(conv, "/markdown off").value is False
    for bad in ("/think maybe", "/markdown", "/markdown sometimes"):
        with pytest.raises(CommandError, match="on\\|off"):
            run_command(conv, bad)
    assert [run_command(conv, f"/{name}").action for name in ("edit", "tokens", "model")] == ["edit", "tokens", "model"]


# ----------------------------------------------------------------- the runner and the REPL on a fake backend

class FakeBackend:
    """Records the messages of every turn; replies "reply N" in two deltas (or `replies`' next),
    after `reasoning` when set."""

    description = "fake"
    details = ["model: fake", "engine: none"]

    def __init__(self, fail_on: str | None = None, interrupt: bool = False, replies: list[list[str]] | None = None,
                 reasoning: str | None = None):
        self.calls: list[tuple[list[dict], dict]] = []
        self.fail_on, self.interrupt, self.replies, self.reasoning = fail_on, interrupt, replies, reasoning

    async def context_usage(self, messages, template_kwargs):
        return sum(len(m["content"].split()) for m in messages), 100

    async def stream(self, messages, params, stats: TurnStats):
        self.calls.append((json.loads(json.dumps(messages)), dict(params)))
        if messages[-1]["content"] == self.fail_on or (self.fail_on == "*" and len(self.calls) > 1):
            raise BackendError("the server went away")
        if self.reasoning:
            yield ReasoningText(self.reasoning)
        for delta in self.replies.pop(0) if self.replies else ("reply ", str(len(self.calls))):
            stats.completion_tokens += 1
            yield delta
            if self.interrupt:  # a Ctrl-C mid-reply: SIGINT, as the terminal would send it
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(30)
        stats.finish_reason = "stop"

    async def aclose(self):
        pass


def _runner(backend, system: str | None = None, out: io.StringIO | None = None):
    return ChatRunner(backend, Conversation(system=system), out or io.StringIO(), io.StringIO())


class TerminalStringIO(io.StringIO):
    """What rich and the runner take for a terminal (colours and all), recorded."""

    def isatty(self) -> bool:
        return True


def test_retry_replaces_the_reply_and_keeps_it_when_the_retry_fails():
    backend = FakeBackend()
    runner = _runner(backend)
    assert asyncio.run(scripted(runner, ["hi", "/retry", "/tokens", "/model"]))
    assert [m["content"] for m in runner.conv.messages] == ["hi", "reply 2"]
    assert backend.calls[1][0] == [{"role": "user", "content": "hi"}]  # resent without the old reply
    assert runner.out.getvalue() == "reply 1\nreply 2\n3 tokens of 100 (3.0% of the context), 2 messages\n" \
        "model: fake\nengine: none\n"
    backend = FakeBackend(fail_on="*")
    runner = _runner(backend)
    assert not asyncio.run(scripted(runner, ["hi", "/retry"]))
    assert [m["content"] for m in runner.conv.messages] == ["hi", "reply 1"]


def test_think_reaches_the_backend_and_reasoning_is_dimmed_not_kept():
    backend = FakeBackend(reasoning="\nLet me think.")
    runner = _runner(backend, out=TerminalStringIO())
    runner.markdown = False
    assert asyncio.run(scripted(runner, ["/think on", "hi"]))
    assert backend.calls[0][1]["chat_template_kwargs"] == {"enable_thinking": True}
    assert runner.out.getvalue() == "\x1b[2mLet me think.\x1b[0m\n\nreply 1\n"
    assert runner.conv.messages[-1] == {"role": "assistant", "content": "reply 1"}
    assert "chat_template_kwargs" not in _runner(FakeBackend()).conv.params
    piped = _runner(FakeBackend(reasoning="Let me think."))
    assert asyncio.run(scripted(piped, ["hi"])) and piped.out.getvalue() == "reply 1\n"  # stdout: replies only


def test_markdown_is_rendered_on_a_terminal_and_plain_elsewhere():
    reply = ["# Title\n\nSome ", "**bold** text and `code`.\n\n", "```python\nprint('hi')\n```\n"]
    runner = _runner(FakeBackend(replies=[list(reply)]), out=TerminalStringIO())
    assert asyncio.run(scripted(runner, ["hi"]))
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", runner.out.getvalue())  # colours and cursor moves
    assert "Title" in shown and "bold text" in shown and "print('hi')" in shown
    assert "**" not in shown and "```" not in shown and "# Title" not in shown
    assert "bold text and code.\n" in shown  # no padding to the width after the text
    assert runner.conv.messages[-1]["content"] == "".join(reply)  # the conversation keeps the Markdown
    piped = _runner(FakeBackend(replies=[list(reply)]))
    assert asyncio.run(scripted(piped, ["hi", "/markdown on"]))
    assert piped.out.getvalue() == "".join(reply) and "not a terminal" in piped.err.getvalue()
    plain = _runner(FakeBackend(replies=[list(reply)]), out=TerminalStringIO())
    assert asyncio.run(scripted(plain, ["/markdown off", "hi"]))
    assert plain.out.getvalue() == "".join(reply)


def test_help_lists_every_command_wrapped_at_word_boundaries(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    runner = _runner(FakeBackend())
    assert asyncio.run(scripted(runner, ["/help"]))
    text = runner.out.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 60 and len(lines) > len(COMMANDS) + 3
    for command, description in COMMANDS:
        assert command in text
        # wrapped, never cut inside a word: the description's words are all there, whole
        assert f"{command} {description}" in " ".join(text.split())
    words = set(" ".join(d for _, d in COMMANDS).split()) | set(" ".join(c for c, _ in COMMANDS).split())
    words |= set(HELP_INTRO.split())
    assert set(text.split()) <= words


def test_readme_lists_every_command():
    readme = (REPO / "README.md").read_text()
    for command, _ in COMMANDS:
        assert f"`{command.split()[0]}" in readme, command


def test_copy_without_a_clipboard_writes_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no wl-copy, xclip, xsel or pbcopy
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(sys.modules, "pyperclip", None)  # as if not installed
    runner = _runner(FakeBackend())
    assert asyncio.run(scripted(runner, ["hi", "/copy"]))
    path = tmp_path / "xdg" / "vllm-cli" / "last_reply.md"
    assert path.read_text() == "reply 1" and f"the last reply is in {path}" in runner.err.getvalue()
    # a clipboard tool on PATH takes it
    (tmp_path / "xsel").write_text(f"#!/bin/sh\nexec /bin/cat > {tmp_path / 'clipboard'}\n")
    (tmp_path / "xsel").chmod(0o755)
    assert asyncio.run(scripted(runner, ["/copy"]))
    assert (tmp_path / "clipboard").read_text() == "reply 1" and "clipboard (xsel)" in runner.err.getvalue()


def test_edit_sends_what_the_editor_wrote_and_nothing_when_empty(tmp_path, monkeypatch):
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/next\" > \"$1\"\n")
    editor.chmod(0o755)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(editor))
    backend = FakeBackend()
    runner = _runner(backend)
    (tmp_path / "next").write_text("line one\nline two\n")
    assert asyncio.run(scripted(runner, ["/edit"]))
    (tmp_path / "next").write_text("\n  \n")
    assert asyncio.run(scripted(runner, ["/edit"]))
    assert [c[0][-1]["content"] for c in backend.calls] == ["line one\nline two"]
    assert "Empty message: nothing sent." in runner.err.getvalue()
    monkeypatch.setenv("EDITOR", "false")
    assert not asyncio.run(scripted(runner, ["/edit"]))
    assert "exited with status 1: nothing sent" in runner.err.getvalue()
    monkeypatch.delenv("EDITOR")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not asyncio.run(scripted(runner, ["/edit"]))
    assert "Error: no editor found: set $EDITOR (none of vi, nano is installed)" in runner.err.getvalue()


def test_every_turn_sends_the_whole_history():
    backend = FakeBackend()
    runner = _runner(backend, system="sys")
    assert asyncio.run(scripted(runner, ["first", "/params temperature=0.1", "second"]))
    assert [messages for messages, _ in backend.calls] == [
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}],
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"},
         {"role": "assistant", "content": "reply 1"}, {"role": "user", "content": "second"}],
    ]
    assert backend.calls[1][1]["temperature"] == 0.1
    assert runner.out.getvalue() == "reply 1\nreply 2\n"  # replies only: notes and stats went to err
    assert "Sampling: temperature=0.1" in runner.err.getvalue()
    assert re.search(r"\[2 tokens, [\d.]+ tokens/s, first token [\d.]+ s\]", runner.err.getvalue())


def test_stats_line_gives_the_decode_speed_after_the_first_token(monkeypatch):
    """The prompt's prefill (here 2 s to the first delta) stays out of the tokens/s figure: 8 more
    tokens in the next 0.4 s is 20 tokens/s, not 9 / 2.4 s."""
    clock = [100.0]
    monkeypatch.setattr(chat_repl.time, "perf_counter", lambda: clock[0])

    class Timed(FakeBackend):
        async def stream(self, messages, params, stats: TurnStats):
            for step, delta in enumerate(["a"] * 9):
                clock[0] += 2.0 if step == 0 else 0.05
                stats.completion_tokens += 1
                yield delta

    runner = _runner(Timed())
    assert asyncio.run(scripted(runner, ["hi"]))
    assert "[9 tokens, 20.0 tokens/s, first token 2.00 s]" in runner.err.getvalue()
    # one delta only: tokens over the whole time; no time at all: no rate
    assert chat_repl.stats_line(TurnStats(completion_tokens=4), 2.0, False, 2.0, 4) == (
        "[4 tokens, 2.0 tokens/s, first token 2.00 s]"
    )
    assert chat_repl.stats_line(TurnStats(), 0.0, True) == "[0 tokens, -, stopped]"


def test_scripted_input_stops_at_the_first_failure():
    backend = FakeBackend(fail_on="boom")
    runner = _runner(backend)
    assert not asyncio.run(scripted(runner, ["ok", "boom", "never"]))
    assert len(backend.calls) == 2 and "Error: the server went away" in runner.err.getvalue()
    assert runner.conv.messages[-1] == {"role": "assistant", "content": "reply 1"}  # the failed question is dropped
    assert not asyncio.run(scripted(_runner(FakeBackend()), ["/load /nonexistent.json", "never"]))
    # Without commands (-q, --whole-input) a leading slash is text; "//" escapes it otherwise.
    backend = FakeBackend()
    assert asyncio.run(scripted(_runner(backend), ["/etc/hosts?"], commands=False))
    assert asyncio.run(scripted(_runner(backend), ["//usr is a dir", "/exit", "never"]))
    assert [c[0][-1]["content"] for c in backend.calls] == ["/etc/hosts?", "/usr is a dir"]


def test_ctrl_c_stops_the_reply_and_keeps_the_session():
    backend = FakeBackend(interrupt=True)
    runner = _runner(backend)

    async def session():
        first = await runner.turn("tell me a long story", interruptible=True)
        backend.interrupt = False
        second = await runner.turn("and then?", interruptible=True)
        return first, second, signal.getsignal(signal.SIGINT)

    first, second, handler = asyncio.run(session())
    assert handler is signal.default_int_handler  # SIGINT is handed back once the reply is done
    assert first.interrupted and first.text == "reply " and not second.interrupted
    assert [m["content"] for m in runner.conv.messages] == ["tell me a long story", "reply ", "and then?", "reply 2"]
    assert "stopped]" in runner.err.getvalue()


def test_repl_with_pipe_input(tmp_path):
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    backend = FakeBackend()
    runner = _runner(backend, system="sys")
    with create_pipe_input() as pipe:
        # Esc-Enter adds a line break; Ctrl-C at the prompt drops the line; Ctrl-D leaves.
        pipe.send_text("hello\r/params max_tokens=9\rline one\x1b\rline two\rdiscarded\x03/history\r\x04")
        session = make_prompt_session(input=pipe, output=DummyOutput(), history=FileHistory(tmp_path / "h"))
        asyncio.run(interactive(runner, session))
    assert [c[0][-1]["content"] for c in backend.calls] == ["hello", "line one\nline two"]
    assert backend.calls[1][1]["max_tokens"] == 9
    assert runner.out.getvalue() == ("reply 1\nreply 2\n[system] sys\n[user] hello\n[assistant] reply 1\n"
                                     "[user] line one\nline two\n[assistant] reply 2\n")
    assert "+line one\n+line two\n" in (tmp_path / "h").read_text()  # persistent history keeps both lines


# ----------------------------------------------------------------- the engine in this process

@pytest.fixture(scope="module")
def engine_backend(tiny_llama_dir):
    from vllm_cli.cli.chat_backends import EngineBackend
    from vllm_cli.config import EngineArgs

    backend = EngineBackend(EngineArgs(model=tiny_llama_dir, kv_cache_memory="64MiB"))
    yield backend
    asyncio.run(backend.aclose())


def test_engine_backend_applies_the_template_to_the_whole_history(engine_backend, monkeypatch):
    seen = []
    real = engine_backend.prompt_ids
    monkeypatch.setattr(engine_backend, "prompt_ids",
                        lambda messages, kwargs=None: seen.append(messages) or real(messages, kwargs))
    runner = _runner(engine_backend, system="You are a pirate.")
    runner.conv.params["max_tokens"] = 6
    assert asyncio.run(scripted(runner, ["Ahoy", "Where is the gold?"]))
    first_reply = runner.conv.messages[2]["content"]
    assert seen[1] == [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Ahoy"},
                       {"role": "assistant", "content": first_reply}, {"role": "user", "content": "Where is the gold?"}]
    prompt = engine_backend.engine.tokenizer.decode(real(seen[1]))
    assert "You are a pirate." in prompt and first_reply.strip() in prompt and prompt.endswith("assistant\n")
    assert "[6 tokens" in runner.err.getvalue() and engine_backend.extra_stop == []


def test_engine_backend_abort_on_close(engine_backend):
    async def first_delta_then_close():
        stats = TurnStats()
        stream = engine_backend.stream([{"role": "user", "content": "Go on forever"}], {}, stats)
        await anext(stream)
        await stream.aclose()  # what Ctrl-C does to the reply
        for _ in range(100):
            if not engine_backend.engine.engine.has_unfinished_requests():
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError("the request was not aborted")

    assert asyncio.run(first_delta_then_close()).completion_tokens >= 1


def test_engine_backend_too_long_conversation_is_a_turn_error(engine_backend):
    runner = _runner(engine_backend)
    assert not asyncio.run(scripted(runner, ["word " * 600]))
    assert "maximum context length" in runner.err.getvalue() and runner.conv.messages == []


def test_fallback_template_stops_at_im_end(tiny_llama_dir):
    from vllm_cli.cli.chat_backends import EngineBackend
    from vllm_cli.config import EngineArgs
    from vllm_cli.tokenizer import FALLBACK_CHAT_TEMPLATE

    backend = EngineBackend(EngineArgs(model=tiny_llama_dir, kv_cache_memory="16MiB",
                                       chat_template=FALLBACK_CHAT_TEMPLATE))
    try:
        assert backend.extra_stop == ["<|im_end|>"]
        ids = backend.prompt_ids([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
        assert backend.engine.tokenizer.decode(ids).startswith("<|im_start|>system\nS<|im_end|>")
    finally:
        asyncio.run(backend.aclose())


def _invoke(*args: str, input: str = ""):
    """The CLI in this process (the engine loads in well under a second once torch is imported)."""
    from typer.testing import CliRunner

    from vllm_cli.cli.main import app

    level = logging.getLogger("vllm_cli").level
    try:
        return CliRunner().invoke(app, ["chat", *args], input=input)
    finally:
        logging.getLogger("vllm_cli").setLevel(level)  # chat quiets the logger; other tests expect it as it was


def test_whole_input_is_one_turn(tiny_llama_dir, monkeypatch):
    from vllm_cli.cli.chat_backends import EngineBackend

    seen = []
    real = EngineBackend.prompt_ids
    monkeypatch.setattr(EngineBackend, "prompt_ids",
                        lambda self, messages, kwargs=None: seen.append(messages) or real(self, messages, kwargs))
    result = _invoke(tiny_llama_dir, "--whole-input", "--max-tokens", "3", "-s", "S", "--kv-cache-memory", "16MiB",
                     input="/not a command\nline two\n")
    assert result.exit_code == 0, result.output
    assert seen == [[{"role": "system", "content": "S"}, {"role": "user", "content": "/not a command\nline two"}]]


def test_quick_sends_one_message_and_exits(tiny_llama_dir):
    result = _invoke(tiny_llama_dir, "-q", "Hi there", "--max-tokens", "4", "--temperature", "0",
                     "--kv-cache-memory", "16MiB", input="ignored\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and result.stdout.endswith("\n") and result.stderr.count("[4 tokens") == 1


def test_unknown_model_dir_is_one_line(tmp_path):
    result = _invoke(str(tmp_path / "no-such-model"), "-q", "hi")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "no-such-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------- end to end: the CLI on a tiny model

def test_piped_stdin_each_line_a_turn_replies_only_on_stdout(tiny_llama_dir, tmp_path):
    out = _chat(tmp_path, tiny_llama_dir, "--system", "You are a pirate.", "--max-tokens", "6",
                "--kv-cache-memory", "64MiB", input="Hello\n\nAnd then?\n/save chat.json\n")
    assert out.returncode == 0, out.stderr
    messages = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "You are a pirate." and messages[3]["content"] == "And then?"
    assert out.stdout == _expected_stdout([messages[2]["content"], messages[4]["content"]])
    assert out.stderr.count("[6 tokens") == 2 and "Saved 5 messages" in out.stderr
    assert "INFO" not in out.stderr  # the engine's start-up lines stay quiet in chat


def test_repl_in_a_pseudo_terminal(tiny_llama_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    # prompt_toolkit switches bracketed paste on once it reads keys in raw mode: the prompt is ready.
    ready = re.escape("\x1b[?2004h")
    child = pexpect.spawn(sys.executable, ["-m", "vllm_cli.cli.main", "chat", tiny_llama_dir, "-s", "You are terse.",
                                           "--kv-cache-memory", "64MiB"],
                          cwd=str(tmp_path), env=_env(tmp_path, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1"),
                          encoding="utf-8", timeout=120, dimensions=(50, 250))
    try:
        child.expect("Ctrl-D leaves")
        child.expect(ready)
        child.sendline("Tell me a long story")
        child.expect(re.escape("\x1b[?2004l"))  # the line went in; the reply streams (up to the whole context)
        child.expect(r"[A-Za-z]")
        child.sendintr()
        child.expect(r"\[\d+ tokens?, [\d.]+ tokens/s, first token [\d.]+ s, stopped\]")
        for command, answer in [("/save saved.json", "Saved 3 messages"), ("/reset", "system message kept"),
                                ("/history", r"\[system\] You are terse\.\r\n"), ("/load saved.json", "Loaded 3"),
                                ("/history", r"\[user\] Tell me a long story"), ("/params max_tokens=3", "max_tokens=3")]:
            child.expect(ready)
            child.sendline(command)
            child.expect(answer)
        child.expect(ready)
        child.send("first line\x1b\rsecond line\r")  # Esc-Enter: a line break inside one message
        child.expect(r"\[3 tokens, [\d.]+ tokens/s, first token [\d.]+ s, cut at the token limit\]")
        child.expect(ready)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant"] and saved[2]["content"].strip()
    history = (tmp_path / "xdg" / "vllm-cli" / "chat_history").read_text()
    assert "+Tell me a long story" in history and "+first line\n+second line" in history


# Qwen3's switch: with enable_thinking false the generation prompt holds an empty think block.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_repl_commands_in_a_pseudo_terminal_on_smollm2(smollm2_gguf_path, tmp_path):
    """/model, /tokens, /think, /retry, /copy, /undo, /edit, /markdown, /help through the real REPL."""
    pexpect = pytest.importorskip("pexpect")
    ready = re.escape("\x1b[?2004h")
    stats = r"\[\d+ tokens?, [\d.]+ tokens/s"
    (tmp_path / "template.jinja").write_text(THINKING_TEMPLATE)
    editor = tmp_path / "editor.sh"  # what the user "types" in the editor
    editor.write_text("#!/bin/sh\nprintf 'What is 2+2?\\nAnswer briefly.\\n' > \"$1\"\n")
    editor.chmod(0o755)
    shims = tmp_path / "bin"  # clipboard tools that fail, as they do without a display
    shims.mkdir()
    for tool in ("wl-copy", "xclip", "xsel", "pbcopy"):
        (shims / tool).write_text("#!/bin/sh\nexit 1\n")
        (shims / tool).chmod(0o755)
    env = _env(tmp_path, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", EDITOR=str(editor),
               PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
    env.pop("VISUAL", None)
    child = pexpect.spawn(sys.executable, ["-m", "vllm_cli.cli.main", "chat", smollm2_gguf_path, "-s", "Be terse.",
                                           "--max-tokens", "8", "--temperature", "0", "--chat-template",
                                           "template.jinja", "--max-model-len", "1024", "--kv-cache-memory", "64MiB"],
                          cwd=str(tmp_path), env=env, encoding="utf-8", timeout=180, dimensions=(50, 200))

    def run(line: str, *answers: str) -> list[re.Match]:
        child.expect(ready)
        child.sendline(line)
        found = []
        for answer in answers:
            child.expect(answer)
            found.append(child.match)
        return found

    try:
        child.expect("Ctrl-D leaves")
        (context,) = run("/model", r"engine: in this process.*\r\ncontext: (\d+) tokens\r\nchat template: ")
        run("Hi", stats)
        (default,) = run("/tokens", r"(\d+) tokens of (\d+) \([\d.]+% of the context\), 3 messages")
        assert default.group(2) == context.group(1)
        run("/think off", r"Thinking off \(enable_thinking=False\)")
        (off,) = run("/tokens", r"(\d+) tokens of \d+")
        assert int(off.group(1)) > int(default.group(1))  # the template got enable_thinking=False
        run("/think on", "Thinking on")
        run("/retry", stats)
        (copied,) = run("/copy", r"the last reply is in (\S+last_reply\.md)")
        run("/save retried.json", "Saved 3 messages")
        run("/undo", r"Removed the last exchange \('Hi'\)")
        run("/edit", stats)
        run("/markdown off", "Markdown rendering off")
        run("/help", r"/tokens +how much of the model's context", r"/exit +leave")
        run("/save saved.json", "Saved 3 messages")
        child.expect(ready)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    retried = json.loads((tmp_path / "retried.json").read_text())
    assert Path(copied.group(1)).read_text() == retried[2]["content"]  # /copy took the regenerated reply
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[1]["content"] == "What is 2+2?\nAnswer briefly." and saved[2]["content"].strip()


# ----------------------------------------------------------------- --url: a real `vllm-cli serve`

API_KEY = "sk-chat-test"


@pytest.fixture(scope="module")
def server_url(tiny_llama_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "log"
    server = launch_server(tiny_llama_dir, log, "--served-model-name", "tiny-a", "tiny-b", kv_cache_memory="64MiB",
                           env={"XDG_DATA_HOME": str(log.parent / "xdg"), "VLLM_API_KEY": API_KEY})
    yield server.url
    server.stop()


class RecordingProxy:
    """Forwards /v1/* to the server and keeps the JSON bodies of chat completion requests."""

    def __init__(self, upstream: str):
        from aiohttp import ClientSession, web

        self.upstream, self.bodies, self.tokenized = upstream, [], []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            if request.path.endswith("/chat/completions"):
                self.bodies.append(json.loads(body))
            if request.path.endswith("/tokenize"):
                self.tokenized.append(json.loads(body))
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            async with ClientSession() as session:
                async with session.request(request.method, upstream + request.path_qs, data=body,
                                           headers=headers) as r:
                    return web.Response(body=await r.read(), status=r.status,
                                        content_type=r.content_type)

        async def start():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", forward)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
            started.set()

        def run():
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_url_mode_sends_the_whole_conversation_to_a_real_server(server_url, tmp_path):
    proxy = RecordingProxy(server_url)
    try:
        out = _chat(tmp_path, "--url", proxy.url, "-s", "You are a pirate.", "--max-tokens", "5",
                    input="Hello\n/params temperature=0 top_k=5\nAnd then?\n/history\n",
                    env={"VLLM_API_KEY": API_KEY}, timeout=60)
    finally:
        proxy.close()
    assert out.returncode == 0, out.stderr
    first, second = proxy.bodies
    assert first["model"] == "tiny-a" and first["stream"] is True and first["max_tokens"] == 5
    assert second["messages"][:2] == [{"role": "system", "content": "You are a pirate."},
                                      {"role": "user", "content": "Hello"}]
    reply = second["messages"][2]
    assert reply["role"] == "assistant" and second["messages"][3] == {"role": "user", "content": "And then?"}
    assert second["temperature"] == 0 and second["top_k"] == 5  # vLLM's extra sampling fields ride in the body
    assert out.stdout.startswith(_expected_stdout([reply["content"]]))
    assert "[assistant] " + reply["content"] in out.stdout  # /history, asked for, goes to stdout too
    assert out.stderr.count("[5 tokens") == 2


def test_url_mode_think_tokens_and_model_are_the_servers(server_url, tmp_path):
    proxy = RecordingProxy(server_url)
    try:
        out = _chat(tmp_path, "--url", proxy.url, "--max-tokens", "3", input="/model\n/think off\nHello\n/tokens\n",
                    env={"VLLM_API_KEY": API_KEY}, timeout=60)
    finally:
        proxy.close()
    assert out.returncode == 0, out.stderr
    (body,) = proxy.bodies
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # vLLM's field, in the body
    assert f"model: tiny-a\nserver: {proxy.url}\ncontext: " in out.stdout
    used, total = map(int, re.search(r"(\d+) tokens of (\d+) \(", out.stdout).groups())
    # the server's /tokenize counted the conversation with its template: more than the last prompt alone
    assert proxy.tokenized == [{"model": "tiny-a", "messages": body["messages"] + [
        {"role": "assistant", "content": out.stdout.splitlines()[3]}], "chat_template_kwargs":
        {"enable_thinking": False}}] and used > 3 and f"context: {total} tokens" in out.stdout


def test_url_mode_reasoning_content_and_tokens_without_tokenize(tmp_path):
    """A server that streams `reasoning_content` (vLLM's --reasoning-parser) and has no /tokenize:
    the reasoning is shown dimmed and not kept, /tokens falls back to the last reply's usage."""
    from aiohttp import web

    from vllm_cli.cli.chat_backends import OpenAIBackend

    def sse(delta: dict, usage: dict | None = None) -> bytes:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": None}], "usage": usage}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                              "owned_by": "x", "max_model_len": 2048}]})

    async def completions(request):
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in ({"role": "assistant", "reasoning_content": "Hmm, "}, {"reasoning_content": "a greeting."},
                      {"content": "Hello!"}):
            await response.write(sse(delta))
        await response.write(sse({}, {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}))
        await response.write(b"data: [DONE]\n\n")
        seen.append(body)
        return response

    seen: list[dict] = []

    async def session():
        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            backend = await OpenAIBackend.connect(url, None, None)
            chat = _runner(backend, out=TerminalStringIO())
            chat.markdown = False
            ok = await scripted(chat, ["/tokens", "/think on", "Hi", "/tokens"])
            await backend.aclose()
            return ok, chat
        finally:
            await runner.cleanup()

    ok, chat = asyncio.run(session())
    assert ok and seen[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat.out.getvalue() == ("Token count unknown: the server has no /tokenize and there is no reply yet.\n"
                                   "\x1b[2mHmm, \x1b[0m\x1b[2ma greeting.\x1b[0m\n\nHello!\n"
                                   "17 tokens of 2048 (0.8% of the context), 2 messages\n")
    assert chat.conv.messages[-1] == {"role": "assistant", "content": "Hello!"}


def test_url_mode_named_model_and_wrong_key(server_url, tmp_path):
    out = _chat(tmp_path, "--url", f"{server_url}/v1", "--model-name", "tiny-b", "-q", "hi", "--max-tokens", "2",
                env={"VLLM_API_KEY": API_KEY})
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    out = _chat(tmp_path, "--url", f"{server_url}/v1", "-q", "hi", "--api-key", "wrong")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("Error: the server at") and "refused the API key" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_url_mode_without_v1_and_vllm_model_flag(server_url, tmp_path):
    """A vLLM user's habits: the server's URL without /v1, the model as --model."""
    proxy = RecordingProxy(server_url)
    try:
        out = _chat(tmp_path, "--url", proxy.url.removesuffix("/v1"), "--model", "tiny-b", "-q", "hi",
                    "--max-tokens", "2", env={"VLLM_API_KEY": API_KEY}, timeout=60)
    finally:
        proxy.close()
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert [b["model"] for b in proxy.bodies] == ["tiny-b"]


def test_url_mode_unreachable_server_is_one_line_and_imports_no_engine(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        code = ("import runpy, sys, atexit\n"
                "atexit.register(lambda: print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules],"
                " file=sys.stderr))\n"
                f"sys.argv = ['vllm-cli', 'chat', '--url', 'http://127.0.0.1:{port}/v1', '-q', 'hi']\n"
                "runpy.run_module('vllm_cli.cli.main', run_name='__main__')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=_env(tmp_path))
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith(f"Error: cannot reach the server at http://127.0.0.1:{port}/v1")
    assert lines[1:] == ["HEAVY []"]
