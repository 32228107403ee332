"""YAML for files a user (or an attacker) wrote: safe, strict and bounded.

On top of ``yaml.SafeLoader``: a key given twice in one mapping is an error naming both
lines (PyYAML keeps the last one silently); nesting deeper than ``MAX_DEPTH`` is refused
before Python's recursion limit is near; and the document's size *with every alias
expanded* is counted on the composed node graph before anything is built, so an alias bomb
(a few lines that expand to billions of nodes) is refused in linear time and memory.

``read_text`` (and ``read_bytes``, which the study directory's JSON files are read through) reads
the file itself within a bound: a device (``/dev/zero``), a FIFO or a socket is refused without
reading it (or waiting for a writer), and a regular file is read at most ``MAX_FILE_BYTES`` + 1
bytes (or the bound given), however large it says it is (``/proc`` files say 0).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from llem_agent.contract.config import MAX_CONFIG_FILE_BYTES

from .errors import ConfigError

MAX_FILE_BYTES = MAX_CONFIG_FILE_BYTES  # 16 MiB: a 100,000-experiment study is a few hundred KiB
MAX_DEPTH = 64  # no study nests deeper than a handful of levels
MAX_EXPANDED_NODES = 200_000  # aliases expanded; a large real study is a few thousand
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str, origin: str) -> None:
        super().__init__(stream)
        self._origin = origin
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ConfigError(
                    f"{self._origin}: nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}; "
                    "a study never needs that"
                )
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue  # merge keys (<<: *anchor) may be overridden on purpose
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{self._origin}: key '{key}' appears twice in one mapping (lines {seen[key]} and {line}); keep one"
                )
            seen[key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


# PyYAML reads YAML 1.1, where 1e-3, 1e6 and 1.5e6 are text (an exponent needs a dot and a sign);
# YAML 1.2 and JSON read them as numbers, and so does llem: a number field takes no text.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789."))


def expanded_size(root: Node, limit: int) -> int:
    """Nodes in the document with every alias expanded (each reference counts its whole subtree),
    counted once per distinct node; stops as soon as the count passes ``limit``."""
    sizes: dict[int, int] = {}
    # Iterative post-order: a deep or wide graph never recurses.
    stack: list[tuple[Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not done:
            if key in on_path:  # a recursive alias: infinite when expanded
                return limit + 1
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        on_path.discard(key)
        total = 1 + sum(sizes.get(id(child), limit + 1) for child in children)
        sizes[key] = min(total, limit + 1)
        if total > limit and node is root:
            return total
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load(text: str, origin: str, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """Parse ``text`` (from ``origin``, for messages); ConfigError for what this module refuses,
    yaml.YAMLError for syntax errors."""
    loader = _StrictLoader(text, origin)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        size = expanded_size(root, max_nodes)
        if size > max_nodes:
            raise ConfigError(
                f"{origin}: the YAML expands to more than {max_nodes:,} nodes once its aliases are followed "
                "(an alias bomb?); refused before building it"
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()


class Unreadable(ConfigError):
    """A file llem will not read (missing aside): the message names it; ``reason`` is the short
    why ("Permission denied", "a FIFO, not a regular file"), for a caller's own wording."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_bytes(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of ``path`` (``what`` names it in messages), or None when it does not exist;
    :class:`Unreadable` when it cannot be read, is not a regular file or is over ``limit``
    bytes. Reads at most ``limit`` + 1 bytes, and never waits for a FIFO's writer."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise Unreadable(f"{what} is a directory: {path}", "a directory") from None
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise Unreadable(f"cannot read {what} {path}: {why}", why) from None
    except ValueError:  # a NUL byte in the path
        raise Unreadable(f"{what} {str(path)!r} is not a valid path", "not a valid path") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise Unreadable(f"{what} is a directory: {path}", "a directory")
        if not stat.S_ISREG(mode):
            kind = f"a {_kind(mode)}, not a regular file"
            raise Unreadable(
                f"{what} {path} is {kind}; llem reads only regular files of at most {limit // 2**20} MiB", kind
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise Unreadable(f"cannot read {what} {path}: {why}", why) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        size = f"larger than {limit // 2**20} MiB"
        raise Unreadable(f"{what} {path} is {size}; llem reads at most that much", size)
    return data


def read_text(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """The UTF-8 text of the user's file ``path`` (``what`` names it in messages), or None when
    it does not exist; ConfigError when it is not a regular file, is over ``limit`` bytes or is
    not UTF-8. Reads at most ``limit`` + 1 bytes."""
    data = read_bytes(path, what, limit)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")
