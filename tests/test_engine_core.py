"""The seams between the engine and the worker: the engine turns scheduled sequences into plain
batch data (prepare_batch), and the layers below never import the layers above."""

from __future__ import annotations

import ast
from pathlib import Path

from vllm_cli.engine.core import prepare_batch
from vllm_cli.engine.sequence import Request
from vllm_cli.sampling_params import SamplingParams

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_cli"


def test_prepare_batch_flattens_the_scheduled_sequences() -> None:
    chunked = Request("a", None, [11, 12, 13, 14, 15], SamplingParams()).seqs[0]
    chunked.block_table = [3, 5]
    whole = Request("b", None, [21, 22], SamplingParams(prompt_logprobs=1)).seqs[0]
    whole.block_table = [2]
    decode = Request("c", None, [31, 32, 33, 34], SamplingParams()).seqs[0]
    decode.token_ids.append(35)
    decode.block_table, decode.num_computed_tokens = [7, 6], 4

    # block size 4: a prefill chunk (not sampled), a whole prompt with prompt logprobs, a decode
    batch = prepare_batch([(chunked, 3), (whole, 2), (decode, 1)], 4)
    step = batch.step
    assert step.input_ids == [11, 12, 13, 21, 22, 35]
    assert step.positions == [0, 1, 2, 0, 1, 4]
    assert step.slots == [12, 13, 14, 8, 9, 24]
    assert step.query_lens == [3, 2, 1]
    assert step.context_lens == [3, 2, 5]
    assert step.block_tables == [[3, 5], [2], [7, 6]]
    # sampled rows first (the last row of each sequence that completes its tokens), then the
    # prompt-logprob rows (position 0 of "b" predicts its token 1)
    assert step.logit_rows == [4, 5, 3]
    assert batch.sample_seqs == [whole, decode]
    assert batch.prompt_chunks == [(whole, 1, 0)]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_arrows_only_run_downward() -> None:
    for path in (PACKAGE / "worker").glob("*.py"):
        assert not [m for m in _imports(path) if m.startswith("vllm_cli.engine")], path
    for path in (PACKAGE / "distributed").glob("*.py"):
        assert not [m for m in _imports(path) if m.startswith(("vllm_cli.engine", "vllm_cli.worker"))], path
