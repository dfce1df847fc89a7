"""Structured outputs: constrain decoding to a JSON schema, regex, choice or grammar (xgrammar)."""

from heron.structured_outputs.params import StructuredOutputsError, StructuredOutputsParams

__all__ = ["StructuredOutputsError", "StructuredOutputsParams"]
