"""Heron's OpenAI-compatible HTTP server: ``heron serve`` and :func:`heron_server.app.build_app`."""

from __future__ import annotations

__version__ = "0.1.0"
