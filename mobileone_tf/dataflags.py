"""Command-line flags generated from the fields of an options dataclass, and
the dataclass read back from the parsed flags: one place holds each
setting's default and help (the option classes of
:mod:`mobileone_tf.export.options` and :mod:`mobileone_tf.quantization.options`).

A field is a flag when its metadata holds:

* ``help``: the flag's help text;
* ``kind``: ``"bool"``, ``"int"``, ``"float"``, ``"string"``, ``"enum"``
  (with ``choices``) or ``"list"`` (comma-separated strings); without it the
  kind follows the field's type annotation (``bool``/``int``/``float``/``str``,
  an enum where ``choices`` is given, a list of the element type for
  ``Sequence[T]``/``tuple``; ``Optional`` unwrapped): how
  :class:`mobileone_tf.training.TrainConfig` declares its fields;
* ``flag``: the flag's name when it differs from the field's (``None``: no flag);
* ``convert``: a function applied to the parsed value (e.g. ``"none"`` -> ``None``).

A list flag's value becomes a list of strings (``kind="list"``) or a tuple of
the annotated element type; an empty one the field's default. Flags are absl flags
(``absl.flags.DEFINE_*``). This module imports neither TensorFlow nor absl at
module level.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

KINDS = ("bool", "int", "float", "string", "enum", "list")


def option(default, help, kind, **meta):
    """A dataclass field with its flag metadata (see the module docstring).

    Raises:
        ValueError: an unknown ``kind``, or ``"enum"`` without ``choices``.
    """
    if kind not in KINDS or (kind == "enum" and not meta.get("choices")):
        raise ValueError(f"option kind must be one of {KINDS} (enum with choices); got {kind!r}")
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind, **meta})


def flag_fields(cls, only=None):
    """``[(flag name, field), ...]`` of the fields of ``cls`` that are flags
    (among the field names ``only`` when given)."""
    out = []
    for f in dataclasses.fields(cls):
        name = f.metadata.get("flag", f.name)
        if "help" in f.metadata and name is not None and (only is None or f.name in only):
            out.append((name, f))
    return out


def flag_kind(cls, field):
    """``(kind, element type)`` of a flag field (see the module docstring);
    the element type is ``str`` except for an annotated list."""
    kind = field.metadata.get("kind")
    if kind:
        return kind, str
    if field.metadata.get("choices"):
        return "enum", str
    t = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if typing.get_origin(t) in (Sequence, tuple, list):
        return "list", typing.get_args(t)[0]
    return {bool: "bool", int: "int", float: "float", str: "string"}[t], t


def define_flags(cls, only=None, flag_values=None, **defaults):
    """Defines one absl flag per field of ``cls`` (:func:`flag_fields`): its
    name, help and default (``defaults``: other defaults by field name, e.g.
    a script's own).

    Raises:
        KeyError: a name in ``defaults`` that is not a flag field.
    """
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    fields = flag_fields(cls, only)
    unknown = set(defaults) - {f.name for _, f in fields}
    if unknown:
        raise KeyError(f"not flag fields of {cls.__name__}: {sorted(unknown)}")
    for name, f in fields:
        kind, helptext = flag_kind(cls, f)[0], f.metadata["help"]
        default = defaults.get(f.name, f.default)
        if kind == "list":
            flags.DEFINE_list(name, None if default is None else [str(v) for v in default],
                              helptext, flag_values=fv)
        elif kind == "enum":
            flags.DEFINE_enum(name, default, list(f.metadata["choices"]), helptext,
                              flag_values=fv)
        else:
            define = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
                      "float": flags.DEFINE_float, "string": flags.DEFINE_string}[kind]
            define(name, default, helptext, flag_values=fv)


def from_flags(cls, only=None, flag_values=None, **overrides):
    """``cls(**values)`` of the parsed flags of :func:`define_flags` (fields
    not defined as flags keep their defaults; ``overrides`` win). A list
    flag's value becomes a list (or a tuple of its element type), an empty
    one the field's default.

    Raises:
        ValueError: a list flag with a value of the wrong type (names the flag).
    """
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for name, f in flag_fields(cls, only):
        value = fv[name].value
        kind, item = flag_kind(cls, f)
        if kind == "list" and not value:
            value = f.default
        elif kind == "list" and item is str:
            value = list(value)
        elif kind == "list":
            try:
                value = tuple(item(v) for v in value)
            except ValueError:
                raise ValueError(f"--{name}: expected comma-separated {item.__name__} "
                                 f"values, got {','.join(value)!r}") from None
        if f.metadata.get("convert"):
            value = f.metadata["convert"](value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)
