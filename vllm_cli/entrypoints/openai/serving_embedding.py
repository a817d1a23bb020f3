"""POST /v1/embeddings (an engine started with --runner pooling): every input is one engine
request, prefill only, all queued at once so the scheduler batches them; the pooled, normalized
hidden states come back as floats or as base64 of little-endian float32 (what OpenAI's clients ask
for by default)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from aiohttp import web

from vllm_cli.entrypoints.openai.protocol import (
    APIError,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    now,
    random_id,
)
from vllm_cli.entrypoints.openai.serving_engine import OpenAIServing
from vllm_cli.pooling_params import PoolingParams


class ServingEmbedding(OpenAIServing):
    runner_kind = "pooling"

    async def handle(self, request: web.Request) -> web.Response:
        req = await self.parse(EmbeddingRequest, request)
        model = self.model_name(req.model)
        prompts = [self._tokenize(x, req.add_special_tokens) for x in req.inputs()]
        params = PoolingParams(dimensions=req.dimensions)
        try:
            self.engine.validate_pooling_params(params)
        except ValueError as e:
            raise APIError(str(e), param="dimensions") from None
        response_id = random_id("embd")
        tasks = [
            asyncio.ensure_future(self.async_engine.encode(ids, params, f"{response_id}-{i}"))
            for i, ids in enumerate(prompts)
        ]
        try:
            outputs = await asyncio.gather(*tasks)
        finally:  # one failed (or the client went away): the others are aborted, not left running
            for task in tasks:
                task.cancel()
        data = [
            EmbeddingData(index=i, embedding=_encode(out.outputs.data, req.encoding_format))
            for i, out in enumerate(outputs)
        ]
        num_tokens = sum(len(ids) for ids in prompts)
        body = EmbeddingResponse(
            id=response_id,
            created=now(),
            model=model,
            data=data,
            usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens),
        )
        return web.json_response(body.model_dump())

    def _tokenize(self, value: str | list[int], add_special_tokens: bool) -> list[int]:
        if isinstance(value, str) and self.tokenizer is not None:
            if not value:
                raise APIError("the input must not be empty", param="input")
            value = list(self.tokenizer.encode(value, add_special_tokens=add_special_tokens))
        return self.process_prompt(value, "input")[1]


def _encode(embedding: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(embedding, dtype="<f4").tobytes()).decode()
    return embedding
