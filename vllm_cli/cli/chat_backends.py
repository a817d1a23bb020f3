"""Where `vllm-cli chat` sends a conversation: the engine in this process, or any
OpenAI-compatible server (--url). Both stream the reply as text deltas and fill in a
TurnStats; closing the stream early (Ctrl-C) aborts the request at the engine or server.
`params` holds the sampling fields and, when /think set it, `chat_template_kwargs`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from vllm_cli.config import EngineArgs
from vllm_cli.outputs import RequestOutput
from vllm_cli.sampling_params import SamplingParams
from vllm_cli.tokenizer import apply_chat_template, chat_stop_strings, resolve_chat_template

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam


class BackendError(Exception):
    """A failure the user can act on (server unreachable, wrong key, context too long): one line."""


class ReasoningText(str):
    """A delta of the model's reasoning (a server's `reasoning_content`): shown dimmed, not kept."""


@dataclass
class TurnStats:
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None


class Backend(Protocol):
    description: str  # what the banner names: the model and where it runs
    details: list[str]  # what /model adds to it

    def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]: ...

    async def context_usage(self, messages: list[dict], template_kwargs: dict | None) -> tuple[int | None, int | None]:
        """(tokens the next turn's prompt takes, the model's context length); None where unknown."""
        ...

    async def aclose(self) -> None: ...


class EngineBackend:
    """An AsyncEngine on this process, the chat template applied here."""

    def __init__(self, engine_args: EngineArgs) -> None:
        # The engine brings torch: imported here, so that --help and `chat --url` never load it.
        from vllm_cli.engine.async_engine import AsyncEngine

        self.engine = AsyncEngine.from_engine_args(engine_args)
        engine = self.engine.engine
        try:
            if engine.tokenizer is None:
                raise ValueError("chat needs a tokenizer")
            self.tokenizer = engine.tokenizer
            # Resolved (and syntax-checked) once, before the first turn.
            self.template, self.template_desc = resolve_chat_template(self.tokenizer, engine_args.chat_template)
        except BaseException:
            self.engine.shutdown()
            raise
        self.extra_stop = chat_stop_strings(self.template)
        self.max_model_len = engine.max_model_len
        self.description = f"{engine.model_name} (in-process, {engine.device}, context {engine.max_model_len} tokens)"
        self.details = [
            f"model: {engine_args.model or engine.model_name}",
            f"engine: in this process, on {engine.device}, dtype {engine_args.dtype}",
            f"context: {engine.max_model_len} tokens",
            f"chat template: {self.template_desc}",
        ]

    def prompt_ids(self, messages: list[dict], template_kwargs: dict | None = None) -> list[int]:
        return apply_chat_template(self.tokenizer, messages, self.template, chat_template_kwargs=template_kwargs)

    async def context_usage(self, messages: list[dict], template_kwargs: dict | None) -> tuple[int | None, int | None]:
        try:
            return len(self.prompt_ids(messages, template_kwargs)), self.max_model_len
        except Exception as e:  # see stream()
            raise BackendError(f"cannot apply the chat template: {e}") from None

    async def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]:
        params = dict(params)
        template_kwargs = params.pop("chat_template_kwargs", None)
        sampling = SamplingParams(**{"max_tokens": None, **params})  # None: up to the end of the context
        stop = list(sampling.stop or [])  # SamplingParams has made it a list
        sampling.stop = stop + [s for s in self.extra_stop if s not in stop]
        try:
            ids = self.prompt_ids(messages, template_kwargs)
        except Exception as e:  # jinja2's errors, or a template's raise_exception (roles out of order)
            raise BackendError(f"cannot apply the chat template: {e}") from None
        stats.prompt_tokens = len(ids)
        try:
            # As a dict, so that the engine checks the prompt against the context length.
            # generate() is an async generator (aclose() aborts the request), annotated as an AsyncIterator.
            request = self.engine.generate({"prompt_token_ids": ids}, sampling)
            async with aclosing(cast(AsyncGenerator[RequestOutput, None], request)) as outputs:
                async for out in outputs:
                    delta = out.outputs[0]
                    stats.completion_tokens += len(delta.token_ids)
                    stats.finish_reason = delta.finish_reason
                    if delta.text:
                        yield delta.text
        except (ValueError, RuntimeError) as e:  # e.g. the conversation outgrew the context
            raise BackendError(str(e)) from None

    async def aclose(self) -> None:
        self.engine.shutdown()


# OpenAI's own sampling arguments; the rest go in the body as vLLM's extensions.
_OPENAI_PARAMS = {"temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "stop"}


class OpenAIBackend:
    """Any OpenAI-compatible server: ours (`vllm-cli serve`), vLLM's or another."""

    def __init__(self, client: openai.AsyncOpenAI, model: str, url: str, max_model_len: int | None = None) -> None:
        self.client, self.model, self.url, self.max_model_len = client, model, url, max_model_len
        self.description = f"{model} at {url}"
        self.details = [f"model: {model}", f"server: {url}"]
        if max_model_len:
            self.details.append(f"context: {max_model_len} tokens")
        self.last_usage: int | None = None  # prompt + completion tokens of the last reply, from its usage

    @property
    def root_url(self) -> str:
        """Where the server's own routes live (vLLM's /tokenize is beside /v1, not under it)."""
        return self.url.removesuffix("/v1")

    @classmethod
    async def connect(cls, url: str, api_key: str | None, model: str | None) -> OpenAIBackend:
        """Reach the server once up front, so that a wrong URL or key fails before the first
        message; pick its first model when none is named. The URL may omit the /v1 that
        OpenAI-compatible servers put their API under (http://localhost:8000 works)."""
        import openai  # an optional dependency (the engine backend needs none of it), and ~1 s to import

        url = url.rstrip("/")
        candidates = [url] if url.endswith("/v1") else [url, url + "/v1"]
        for base in candidates:
            # No retries: an unreachable server should say so at once, not after back-offs.
            client = openai.AsyncOpenAI(base_url=base, api_key=api_key or "EMPTY", max_retries=0)
            try:
                cards = [m async for m in client.models.list()]
                break
            except openai.NotFoundError:
                cards = []  # no /models here: maybe under /v1; else fine when a model is named
                if base != candidates[-1]:
                    await client.close()
            except openai.OpenAIError as e:
                await client.close()
                raise _error(e, base) from None
        url = base
        if model is None:
            if not cards:
                await client.close()
                raise BackendError(f"{url} lists no models; name one with --model-name")
            model = cards[0].id
        # vLLM's model cards (and ours) say the context length; OpenAI's do not.
        lengths = [getattr(c, "max_model_len", None) for c in cards if c.id == model]
        return cls(client, model, url, lengths[0] if lengths and isinstance(lengths[0], int) else None)

    async def context_usage(self, messages: list[dict], template_kwargs: dict | None) -> tuple[int | None, int | None]:
        """The server's /tokenize (vLLM's and ours render the chat template there); a server without
        one: the usage of the last reply."""
        import httpx  # openai's HTTP client

        body: dict = {"model": self.model, "messages": messages}
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                response = await http.post(
                    f"{self.root_url}/tokenize", json=body, headers={"Authorization": f"Bearer {self.client.api_key}"}
                )
            if response.status_code == 200:
                data = response.json()
                return data["count"], data.get("max_model_len") or self.max_model_len
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass  # no usable /tokenize: fall back to the last usage
        return self.last_usage, self.max_model_len

    async def stream(self, messages: list[dict], params: dict, stats: TurnStats) -> AsyncIterator[str]:
        import openai  # optional: see connect()

        kwargs = {k: v for k, v in params.items() if k in _OPENAI_PARAMS and v is not None}
        extra = {k: v for k, v in params.items() if k not in _OPENAI_PARAMS and v is not None}
        try:
            chunks = await self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra or None,
                **kwargs,
            )
            async with aclosing(chunks):  # closing the stream drops the connection: the server aborts
                async for chunk in chunks:
                    if chunk.usage is not None:
                        stats.prompt_tokens = chunk.usage.prompt_tokens
                        stats.completion_tokens = chunk.usage.completion_tokens
                        self.last_usage = chunk.usage.total_tokens
                    for choice in chunk.choices:
                        stats.finish_reason = choice.finish_reason or stats.finish_reason
                        # vLLM's field (`reasoning` in its newer releases), outside OpenAI's types
                        extra = choice.delta.model_extra or {}
                        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningText(reasoning)
                        if choice.delta.content:
                            if chunk.usage is None:  # a count until the usage chunk gives the real one
                                stats.completion_tokens += 1
                            yield choice.delta.content
        except openai.OpenAIError as e:
            raise _error(e, self.url) from None

    async def aclose(self) -> None:
        await self.client.close()


def _error(e: Exception, url: str) -> BackendError:
    import openai  # optional: see OpenAIBackend.connect()

    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        reason = f" ({str(cause).strip().splitlines()[0]})" if cause and str(cause).strip() else ""
        return BackendError(f"cannot reach the server at {url}{reason}")
    if isinstance(e, openai.APIStatusError):
        message = e.message
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else None
        if isinstance(body, dict) and body.get("message"):
            message = body["message"]
        if isinstance(e, openai.AuthenticationError):
            return BackendError(f"the server at {url} refused the API key (--api-key): {message}")
        return BackendError(f"the server at {url} answered {e.status_code}: {message}")
    return BackendError(f"{url}: {e}")
