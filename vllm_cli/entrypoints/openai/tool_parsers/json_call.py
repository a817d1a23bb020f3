"""A JSON object that names a function and its arguments, read as far as it has arrived."""

from __future__ import annotations

from collections.abc import Collection

from vllm_cli.entrypoints.openai.tool_parsers.base import PartialCall
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import Node, canonical_object


def call_from_object(
    node: Node,
    *,
    args_keys: tuple[str, ...] = ("arguments", "parameters"),
    allowed_keys: Collection[str] | None = None,
    require_args: bool = False,
) -> PartialCall | None:
    """`{"name": ..., "arguments": {...}}` as a (partial) call; None when the object is not a call and
    cannot become one. `allowed_keys`: any other key makes it not a call. `require_args`: a call must
    have an arguments member (for formats with no marker, where a JSON answer could otherwise pass for
    a call). The name is held back until the arguments have begun as an object or the whole object is
    there, so that arguments of the wrong type are found out before anything is streamed."""
    if node.kind != "object":
        return None
    if allowed_keys is not None and any(k not in allowed_keys for k in node.keys()):
        return None
    name_node = node.member("name")
    if name_node is not None:
        if name_node.kind != "string":
            return None
        if name_node.complete and not name_node.value:
            return None
    args_node = next((v for k, v in node.members if k in args_keys and v is not None), None)
    if args_node is not None:
        if args_node.kind not in ("object", "string", "literal"):
            return None
        if args_node.kind == "literal" and args_node.complete and args_node.value is not None:
            return None
    if node.complete:
        if name_node is None:
            return None
        if args_node is None:
            if require_args:
                return None
            arguments: str | None = "{}"
        elif args_node.kind == "object":
            arguments = args_node.canon
        elif args_node.kind == "string":  # arguments written as a JSON string
            arguments = canonical_object(args_node.value)
        else:  # null
            arguments = "{}"
        if arguments is None:
            return None
        return PartialCall(name_node.value, arguments, complete=True)
    name = name_node.value if name_node is not None and name_node.complete else None
    if name is None or args_node is None or args_node.kind != "object":
        return PartialCall(None)  # arguments written as a string or null are sent whole once complete
    return PartialCall(name, args_node.canon)
