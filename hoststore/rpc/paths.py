"""Snapshot paths between a client and a shard: the server writes and reads only under its
``--snapshot_root``; clients name snapshots by paths relative to it.

A client that sees the root on a shared filesystem (``ShardedStore(snapshot_root=...)``)
passes its own absolute paths; they are translated here into the relative names the server
takes. os.path's own functions are used on purpose (pathlib's ``is_relative_to`` does not
resolve ``..`` or symlinks, and the server must).
"""

from __future__ import annotations

import os


class PathEscape(ValueError):
    """A snapshot path that would leave the root."""


def relative(path: str) -> str:
    """``path`` as a clean relative name, or PathEscape: no absolute path, no ``..``, no
    empty name."""
    if not path or os.path.isabs(path) or "\0" in path:
        raise PathEscape(f"snapshot path {path!r} must be a non-empty path relative to the "
                         "server's --snapshot_root")  # fmt: skip
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PathEscape(f"snapshot path {path!r} leaves the server's --snapshot_root")
    return "/".join(parts)


def confine(root: str, path: str) -> str:
    """The server-side location of the client's relative ``path`` under ``root``, resolved
    through symlinks; PathEscape when it would end up outside the root."""
    rel = relative(path)
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, full]) != real_root or full == real_root:
        raise PathEscape(f"snapshot path {path!r} leaves the server's --snapshot_root")
    return full


def to_root(root: str, path: str) -> str:
    """A client's local ``path`` as the relative name under its view ``root`` of the
    servers' snapshot root (ValueError when it lies outside)."""
    root, full = os.path.abspath(root), os.path.abspath(path)
    if os.path.commonpath([root, full]) != root or full == root:
        raise PathEscape(f"snapshot path {path} is not under the store's snapshot root "
                         f"{root}: the shard servers can only write there")  # fmt: skip
    return os.path.relpath(full, root)


def scrub(root: str, message: str) -> str:
    """``message`` with the server's root taken out, so that errors name the client's
    relative path and nothing else of the server's filesystem."""
    for r in {os.path.realpath(root), os.path.abspath(root)}:
        message = message.replace(r + os.sep, "").replace(r, "<snapshot_root>")
    return message
