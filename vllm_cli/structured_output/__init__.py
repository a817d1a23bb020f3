"""Constrained decoding (structured outputs): JSON schema, any JSON object, regex, choice and
grammar on xgrammar (default) or llguidance, as vLLM does it. Importing this package imports
neither backend: each is loaded by the first request that needs it."""

from vllm_cli.structured_output.manager import SequenceGrammar, StructuredOutputManager

__all__ = ["SequenceGrammar", "StructuredOutputManager"]
