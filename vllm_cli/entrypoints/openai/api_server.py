"""The OpenAI-compatible HTTP server: `build_app(async_engine, ...)` makes the aiohttp app
(routes, middleware, /openapi.json); `run_server(engine_args, ...)` loads the engine, serves
it and drains in-flight requests on SIGINT/SIGTERM.

Middleware, outermost first: CORS preflight (before auth: browsers send no credentials on
preflight), errors (everything leaves as {"error": {...}}), API key, JSON content type (a POST body
must be `application/json`: a browser sends text/plain cross-origin without a preflight, so
accepting it would let any web page drive a server on localhost). CORS headers on real responses
are added in on_response_prepare, so streamed responses get them too. The body size limit is
aiohttp's client_max_size, which the error middleware turns into an OpenAI-shaped 413.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from vllm_cli.config import EngineArgs
from vllm_cli.distributed import WorkerFailedError
from vllm_cli.engine.async_engine import AsyncEngine
from vllm_cli.entrypoints.openai import protocol as p
from vllm_cli.entrypoints.openai.metrics import Metrics
from vllm_cli.entrypoints.openai.protocol import APIError, parse_request
from vllm_cli.entrypoints.openai.serving_chat import ServingChat
from vllm_cli.entrypoints.openai.serving_completion import ServingCompletion
from vllm_cli.entrypoints.openai.serving_embedding import ServingEmbedding
from vllm_cli.entrypoints.openai.serving_engine import server_error
from vllm_cli.entrypoints.openai.serving_responses import DEFAULT_STORE_SIZE, ServingResponses
from vllm_cli.logger import init_logger
from vllm_cli.tokenizer import resolve_chat_template
from vllm_cli.version import __version__

logger = init_logger(__name__)

MAX_BODY_BYTES = 10 * 2**20  # far above any prompt that fits a context window
OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})  # no API key needed: probes and scrapers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerState:
    async_engine: AsyncEngine
    served_model_names: list[str]
    chat_template_desc: str
    metrics: Metrics
    chat: ServingChat
    completion: ServingCompletion
    created: int
    openapi: dict
    responses: ServingResponses
    embedding: ServingEmbedding


STATE = web.AppKey("state", ServerState)


@dataclass
class ParserOptions:
    """vLLM's --enable-auto-tool-choice, --tool-call-parser, --tool-parser-plugin, --reasoning-parser."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    tool_parser_plugin: str | None = None
    reasoning_parser: str | None = None

    def resolve(self) -> tuple[type | None, type | None]:
        """(tool parser class, reasoning parser class); ValueError with one readable line for a bad name."""
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        tool_parser = reasoning_parser = None
        if self.tool_parser_plugin or self.tool_call_parser:
            from vllm_cli.entrypoints.openai.tool_parsers import ToolParserManager

            if self.tool_parser_plugin:
                ToolParserManager.import_tool_parser(self.tool_parser_plugin)
            if self.tool_call_parser:
                tool_parser = ToolParserManager.get_tool_parser(self.tool_call_parser)
        if self.reasoning_parser:
            from vllm_cli.entrypoints.openai.reasoning_parsers import ReasoningParserManager

            reasoning_parser = ReasoningParserManager.get_reasoning_parser(self.reasoning_parser)
        return tool_parser, reasoning_parser


def build_app(
    async_engine: AsyncEngine,
    *,
    api_key: str | None = None,
    allowed_origins: Sequence[str] = (),
    served_model_names: Sequence[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    parsers: ParserOptions | None = None,
    responses_store_size: int = DEFAULT_STORE_SIZE,
) -> web.Application:
    """The app for one engine. api_key: required as `Authorization: Bearer KEY` on every path but
    /health, /metrics and /version. allowed_origins: CORS origins ("*" for any; none: CORS off).
    parsers: tool-call and reasoning parsing (none by default). responses_store_size: how many /v1/responses
    results are kept for GET and previous_response_id (0: none)."""
    parsers = parsers or ParserOptions()
    tool_parser, reasoning_parser = parsers.resolve()
    engine = async_engine.engine
    if engine is None:
        raise ValueError("the engine has not been built")
    names = list(served_model_names or engine.served_model_names)
    if engine.tokenizer is not None:
        template, desc = resolve_chat_template(engine.tokenizer, engine.args.chat_template)
    else:
        template, desc = "", "none (no tokenizer: chat is unavailable)"
    metrics = Metrics(async_engine, names[0])
    chat = ServingChat(
        async_engine,
        chat_template=template,
        enable_auto_tools=parsers.enable_auto_tool_choice,
        tool_parser=tool_parser,
        reasoning_parser=reasoning_parser,
        metrics=metrics,
        served_model_names=names,
    )
    completion = ServingCompletion(async_engine, metrics=metrics, served_model_names=names)
    responses = ServingResponses(chat, responses_store_size)
    embedding = ServingEmbedding(async_engine, metrics=metrics, served_model_names=names)
    state = ServerState(
        async_engine,
        names,
        desc,
        metrics,
        chat,
        completion,
        p.now(),
        openapi_schema(bool(api_key)),
        responses,
        embedding,
    )

    app = web.Application(
        middlewares=[_preflight(list(allowed_origins)), _errors, _auth(api_key), _json_content_type],
        client_max_size=max_body_bytes,
    )
    app[STATE] = state
    if allowed_origins:
        app.on_response_prepare.append(_cors_headers(list(allowed_origins)))
    app.router.add_get("/health", _health)
    app.router.add_get("/version", _version)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model:.+}", _model)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/responses", _responses)
    app.router.add_get("/v1/responses/{response_id}", _get_response)
    app.router.add_delete("/v1/responses/{response_id}", _delete_response)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/detokenize", _detokenize)
    app.router.add_get("/openapi.json", _openapi)
    return app


# ----- middleware -----


def _error_response(error: APIError, headers: dict | None = None) -> web.Response:
    response = web.json_response(error.to_dict(), status=error.status, headers=headers)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as e:
        return _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status in (404, 405):
            message = f"{e.reason}: {request.method} {request.path}"
        else:
            message = e.text.removeprefix(f"{e.status}: ") if e.text else e.reason
        error = APIError(message, e.status, type="invalid_request_error" if e.status < 500 else "server_error")
        keep = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return _error_response(error, keep)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return _error_response(server_error(e))


def _auth(api_key: str | None):
    expected = f"Bearer {api_key}".encode() if api_key else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                raise APIError(
                    "invalid or missing API key: send it as 'Authorization: Bearer <key>'", 401, code="invalid_api_key"
                )
        return await handler(request)

    return auth


@web.middleware
async def _json_content_type(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a POST to a route whose body is not declared `application/json` (charset allowed), as vLLM.
    Unknown paths and wrong methods fall through to their 404 / 405."""
    if request.method == "POST" and request.match_info.http_exception is None:
        media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            shown = f"'{media_type}'" if media_type else "none"
            raise APIError(
                f"Unsupported Media Type: only 'application/json' is allowed (got {shown})",
                415,
                code="unsupported_media_type",
            )
    return await handler(request)


def _origin_allowed(request: web.Request, origins: list[str]) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and ("*" in origins or origin in origins) else None


def _preflight(origins: list[str]):
    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not origins or request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = _origin_allowed(request, origins)
        if origin is None:
            return _error_response(APIError("CORS: origin not allowed", 403))
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*" if "*" in origins else origin,
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    return preflight


def _cors_headers(origins: list[str]):
    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = _origin_allowed(request, origins)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Vary"] = "Origin"

    return add


# ----- routes -----


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[STATE].async_engine.is_running else 503)


async def _version(request: web.Request) -> web.Response:
    return web.json_response(p.VersionResponse(version=__version__).model_dump())


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _model_card(state: ServerState, name: str) -> p.ModelCard:
    engine = state.chat.engine
    return p.ModelCard(id=name, created=state.created, root=engine.model_name, max_model_len=engine.max_model_len)


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(p.ModelList(data=[_model_card(state, n) for n in state.served_model_names]).model_dump())


async def _model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = state.chat.model_name(request.match_info["model"])
    return web.json_response(_model_card(state, name).model_dump())


async def _chat(request: web.Request) -> web.StreamResponse:
    return await request.app[STATE].chat.handle(request)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await request.app[STATE].completion.handle(request)


async def _responses(request: web.Request) -> web.StreamResponse:
    return await request.app[STATE].responses.create(request)


async def _get_response(request: web.Request) -> web.Response:
    return await request.app[STATE].responses.retrieve(request)


async def _delete_response(request: web.Request) -> web.Response:
    return await request.app[STATE].responses.delete(request)


async def _embeddings(request: web.Request) -> web.StreamResponse:
    return await request.app[STATE].embedding.handle(request)


async def _tokenize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    req = parse_request(p.TokenizeRequest, await request.read())
    state.chat.model_name(req.model)
    tokenizer = state.chat.tokenizer
    if tokenizer is None:
        raise APIError("this server was started without a tokenizer")
    if req.messages is not None:
        tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools] if req.tools else None
        ids = await state.chat.off_loop(
            state.chat.render,
            [m.to_template_dict() for m in req.messages],
            req.add_generation_prompt,
            req.continue_final_message,
            req.chat_template_kwargs,
            tools,
        )
    else:
        text = req.prompt or ""
        state.chat.check_prompt_chars(len(text), "prompt")
        encode = functools.partial(tokenizer.encode, text, add_special_tokens=req.add_special_tokens)
        ids = list(await state.chat.off_loop(encode))
    engine = state.chat.engine
    return web.json_response(
        p.TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids).model_dump()
    )


async def _detokenize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    req = parse_request(p.DetokenizeRequest, await request.read())
    state.chat.model_name(req.model)
    tokenizer = state.chat.tokenizer
    if tokenizer is None:
        raise APIError("this server was started without a tokenizer")
    vocab = len(tokenizer)
    if any(not 0 <= t < vocab for t in req.tokens):
        raise APIError(f"token ids must be in [0, {vocab})", param="tokens")
    text = await state.chat.off_loop(tokenizer.decode, req.tokens)
    return web.json_response(p.DetokenizeResponse(prompt=str(text)).model_dump())


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].openapi)


def openapi_schema(api_key_required: bool) -> dict:
    """OpenAPI 3.1 description of every route, from the pydantic models themselves."""
    requests: list[type[BaseModel]] = [
        p.ChatCompletionRequest,
        p.CompletionRequest,
        p.ResponsesRequest,
        p.EmbeddingRequest,
        p.TokenizeRequest,
        p.DetokenizeRequest,
    ]
    responses: list[type[BaseModel]] = [
        p.ChatCompletionResponse,
        p.ChatCompletionChunk,
        p.CompletionResponse,
        p.ResponseObject,
        p.ResponseDeleted,
        p.EmbeddingResponse,
        p.ModelList,
        p.ModelCard,
        p.TokenizeResponse,
        p.DetokenizeResponse,
        p.VersionResponse,
        p.ErrorResponse,
    ]
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in requests]
    modes += [(m, "serialization") for m in responses]
    refs, top = models_json_schema(modes, ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict:
        return refs[(model, mode)]

    def json_body(schema: dict) -> dict:
        return {"content": {"application/json": {"schema": schema}}}

    errors = {
        str(code): {"description": desc, **json_body(ref(p.ErrorResponse))}
        for code, desc in (
            (400, "Invalid request"),
            (401, "Missing or wrong API key"),
            (404, "Unknown model or path"),
            (413, "Request body too large"),
            (415, "Request body not declared application/json"),
            (500, "Failure inside the server"),
        )
    }

    def post(summary: str, request: type[BaseModel], response: type[BaseModel], stream: bool = False) -> dict:
        ok = json_body(ref(response))
        if stream:
            ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, **json_body(ref(request, "validation"))},
                "responses": {"200": {"description": "OK", **ok}, **errors},
            }
        }

    def get(summary: str, content: dict | None = None, open_: bool = False, **extra) -> dict:
        op = {"summary": summary, "responses": {"200": {"description": "OK", **(content or {})}, **errors}, **extra}
        if open_ and api_key_required:
            op["security"] = []
        return {"get": op}

    paths = {
        "/v1/chat/completions": post("Chat completion", p.ChatCompletionRequest, p.ChatCompletionResponse, True),
        "/v1/completions": post("Text completion", p.CompletionRequest, p.CompletionResponse, True),
        "/v1/responses": post("Response (OpenAI's Responses API)", p.ResponsesRequest, p.ResponseObject, True),
        "/v1/responses/{response_id}": {
            **get("A stored response", json_body(ref(p.ResponseObject)), parameters=[_path_param("response_id")]),
            "delete": {
                "summary": "Delete a stored response",
                "parameters": [_path_param("response_id")],
                "responses": {"200": {"description": "OK", **json_body(ref(p.ResponseDeleted))}, **errors},
            },
        },
        "/v1/embeddings": post("Embeddings (--runner pooling)", p.EmbeddingRequest, p.EmbeddingResponse),
        "/v1/models": get("Served models", json_body(ref(p.ModelList))),
        "/v1/models/{model}": get(
            "One served model",
            json_body(ref(p.ModelCard)),
            parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        ),
        "/tokenize": post("Text or messages to token ids", p.TokenizeRequest, p.TokenizeResponse),
        "/detokenize": post("Token ids to text", p.DetokenizeRequest, p.DetokenizeResponse),
        "/health": get("200 while the engine runs", open_=True),
        "/version": get("Server version", json_body(ref(p.VersionResponse)), open_=True),
        "/metrics": get("Prometheus metrics", {"content": {"text/plain": {"schema": {"type": "string"}}}}, open_=True),
        "/openapi.json": get("This document", {"content": {"application/json": {"schema": {"type": "object"}}}}),
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "vllm-cli OpenAI-compatible API", "version": __version__},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }
    if api_key_required:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    else:  # no 401 to expect
        for path in paths.values():
            for op in path.values():
                del op["responses"]["401"]
    return doc


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# ----- running it -----


def ensure_port_free(host: str | None, port: int) -> None:
    """Raise OSError with one readable line when the server could not listen on host:port
    (another process has it, or it needs privileges); port 0 (any free port) always works."""
    if port == 0:
        return
    where = f"{host}:{port}" if host else f"port {port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {where}: --host {host!r} does not resolve ({e.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no obstacle
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise OSError(
                        f"cannot listen on {where}: the address is already in use (another server is running "
                        "there; stop it or choose another --port)"
                    ) from None
                if e.errno == errno.EACCES:
                    raise OSError(f"cannot listen on {where}: permission denied (ports below 1024 need root)") from None
                # anything else (e.g. no IPv6 on this machine) is left to the server's own bind


def _url(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run_server(
    engine_args: EngineArgs,
    *,
    host: str | None,
    port: int,
    api_key: str | None = None,
    allowed_origins: Sequence[str] = (),
    shutdown_timeout: float = 30.0,
    parsers: ParserOptions | None = None,
    responses_store_size: int = DEFAULT_STORE_SIZE,
) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, give in-flight requests up to
    shutdown_timeout seconds to finish, abort the rest and return."""
    parsers = parsers or ParserOptions()
    parsers.resolve()  # a bad parser name fails before the model loads
    ensure_port_free(host, port)  # a busy port too: not after a minute of loading
    logger.info(
        "Loading %s; the server listens once it is loaded and warmed up", engine_args.model or "the default model"
    )
    async_engine = AsyncEngine.from_engine_args(engine_args)
    try:
        app = build_app(
            async_engine,
            api_key=api_key,
            allowed_origins=allowed_origins,
            parsers=parsers,
            responses_store_size=responses_store_size,
        )
        state = app[STATE]
        access_log = logging.getLogger("vllm_cli.access")
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=shutdown_timeout,
            access_log=access_log,
            access_log_format='%a "%r" %s %b %Tfs',
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            engine = state.chat.engine
            names = state.served_model_names
            alias = "" if names == [engine.model_name] else " as " + ", ".join(map(repr, names))
            logger.info(
                "Serving %s%s on %s (OpenAI API under /v1); chat template: %s; KV cache: %d tokens; "
                "max_model_len: %d%s",
                engine.model_name,
                alias,
                ", ".join(_url(a) for a in runner.addresses),
                state.chat_template_desc,
                engine.kv_cache_tokens,
                engine.max_model_len,
                "; API key required" if api_key else "",
            )
            await _wait_for_signal(async_engine)
            if not async_engine.is_running:
                raise WorkerFailedError(f"the engine stopped: {async_engine.dead_reason}")
            logger.info(
                "Shutting down: no new requests; %d in flight get up to %gs to finish",
                engine.get_num_unfinished_requests(),
                shutdown_timeout,
            )
        finally:
            await runner.cleanup()
    finally:
        async_engine.shutdown()
    logger.info("Server stopped")


async def _wait_for_signal(async_engine: AsyncEngine) -> None:
    """Until SIGINT/SIGTERM, or until the engine stops by itself (a tensor-parallel worker died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set() and async_engine.is_running:
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
    finally:
        for sig in signals:  # a second Ctrl-C interrupts the grace period
            loop.remove_signal_handler(sig)
