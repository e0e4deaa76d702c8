"""Command-line flags generated from a config dataclass: one flag per field, same name.

Nested dataclass fields become dotted flags (``--synthetic.hours``). Each flag's default is
the value in the config given to :func:`define_flags` (so ``--help`` shows the embedded
default), and :func:`apply_flags` replaces only the fields whose flags were given, so a
different base config (``--smoke``) keeps its own values for the rest.

Written here rather than taken from ml_collections' ``config_flags``: that one needs a
ConfigDict (mutable, untyped), while the trainer's config is a typed frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from absl import flags


def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _unwrap_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _help(field: dataclasses.Field, default: Any) -> str:
    text = field.metadata.get("help", field.name.replace("_", " ") + ".")
    return text if default is not None else text + " (default: unset)"


def define_flags(
    config: Any,
    prefix: str = "",
    values=flags.FLAGS,
    groups: dict[str, tuple[str, ...]] | None = None,
    _group: str | None = None,
) -> list[str]:
    """Defines a flag per field of the dataclass instance ``config``; returns their names.
    With ``groups`` (group -> field names), each flag is filed under its group (absl's
    module name, which :func:`groups_help` lists); a field in no group is an error."""
    group_of = {f: g for g, fs in (groups or {}).items() for f in fs}
    names = []
    for field, tp in _fields(type(config)):
        name, default = prefix + field.name, getattr(config, field.name)
        group = _group
        if groups is not None and group is None:
            if field.name not in group_of:
                raise KeyError(f"config field {name} is in no help group")
            group = group_of[field.name]
        if dataclasses.is_dataclass(tp):
            names += define_flags(default, name + ".", values, _group=group)
            continue
        base, _ = _unwrap_optional(tp)
        kw = {"flag_values": values, "module_name": group} if group else {"flag_values": values}
        help_text = _help(field, default)
        if base is bool:
            flags.DEFINE_boolean(name, default, help_text, **kw)
        elif base is int:
            flags.DEFINE_integer(name, default, help_text, **kw)
        elif base is float:
            flags.DEFINE_float(name, default, help_text, **kw)
        elif base is str:
            flags.DEFINE_string(name, default, help_text, **kw)
        elif typing.get_origin(base) is tuple:
            flags.DEFINE_list(name, [str(x) for x in default], help_text, **kw)
        else:
            raise TypeError(f"no flag type for config field {name}: {tp}")
        names.append(name)
    return names


def groups_help(groups: dict[str, tuple[str, ...]], values=flags.FLAGS) -> str:
    """The flags of each group under its heading, in the groups' order (for ``--help``)."""
    return "\n".join(values.module_help(g) for g in groups)


def apply_flags(config: Any, prefix: str = "", values=flags.FLAGS) -> Any:
    """``config`` with every field whose flag was given on the command line replaced."""
    changes = {}
    for field, tp in _fields(type(config)):
        name, current = prefix + field.name, getattr(config, field.name)
        if dataclasses.is_dataclass(tp):
            new = apply_flags(current, name + ".", values)
            if new != current:
                changes[field.name] = new
            continue
        if not values[name].present:
            continue
        value = values[name].value
        base, _ = _unwrap_optional(tp)
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            try:
                value = tuple(item(x) for x in value)
            except ValueError:
                raise flags.ValidationError(
                    f"--{name}={','.join(value)}: each item must be {item.__name__}"
                ) from None
        changes[field.name] = value
    return dataclasses.replace(config, **changes) if changes else config
