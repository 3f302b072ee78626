"""YAML for files and flags a user points at: the safe loader (no file can run code) with bounds on what a few
bytes can make it do, and short excerpts of values for error messages.

PyYAML's safe loader still expands aliases: nine nested levels of ``[*a, *a, ...]`` are a few hundred bytes that
become hundreds of millions of references, and anything that walks or prints the result (validation, JSON, an
error message) then takes minutes or prints megabytes. ``load`` refuses, before building any Python object, a
document larger than MAX_BYTES, nested deeper than MAX_DEPTH, with more than MAX_ALIASES aliases, or one whose
values, aliases expanded, would hold more than MAX_NODES scalars and collections.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 100_000
EXCERPT_CHARS = 200


class YAMLLimitError(ValueError):
    """A YAML document beyond the bounds of this module; the message says which and what is allowed."""


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr(value) cut to about ``limit`` characters, saying how much was left out. A container's repr is never
    built in full: items are added until the limit is passed (a shared structure of billions of references costs
    nothing to show)."""
    if isinstance(value, dict | list | tuple):
        brackets = "{}" if isinstance(value, dict) else "()" if isinstance(value, tuple) else "[]"
        items = value.items() if isinstance(value, dict) else value
        parts, size = [], 0
        for item in items:
            text = f"{excerpt(item[0], limit)}: {excerpt(item[1], limit)}" if isinstance(value, dict) \
                else excerpt(item, limit)
            parts.append(text)
            size += len(text) + 2
            if size > limit:
                break
        text = brackets[0] + ", ".join(parts) + brackets[1]
        if len(parts) < len(value) or len(text) > limit:
            return f"{text[:limit]}... ({len(value)} items)"
        return text
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_events(text: str, source: str) -> None:
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise YAMLLimitError(f"{source}: more than {MAX_ALIASES} YAML aliases (*name); allowed: at most "
                                     f"{MAX_ALIASES} (write the values out)")
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YAMLLimitError(f"{source}: YAML nested deeper than {MAX_DEPTH} levels; allowed: at most "
                                     f"{MAX_DEPTH}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(node: yaml.Node, source: str) -> int:
    """Scalars and collections the node holds with every alias expanded (each shared node counted once per
    reference), computed on the composed graph without expanding it."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = total
        if total > MAX_NODES:
            raise YAMLLimitError(f"{source}: with its aliases expanded this YAML holds more than {MAX_NODES} "
                                 f"values; allowed: at most {MAX_NODES}")
        return total

    return size(node)


def load(text: str, source: str = "<string>") -> Any:
    """``yaml.safe_load(text)`` within the bounds above; YAMLLimitError (a ValueError) beyond them, and
    yaml.YAMLError for text that is not YAML."""
    if len(text) > MAX_BYTES:
        raise YAMLLimitError(f"{source}: {len(text)} bytes of YAML; allowed: at most {MAX_BYTES}")
    _check_events(text, source)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _expanded_size(node, source)
    return yaml.safe_load(text)


__all__ = ["EXCERPT_CHARS", "MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YAMLLimitError", "excerpt", "load"]
