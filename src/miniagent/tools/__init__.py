"""Tools: Python functions the model can call, with schemas from their signatures and docstrings."""

from __future__ import annotations

from ._function import Tool, ToolFunc

__all__ = ["Tool", "ToolFunc"]
