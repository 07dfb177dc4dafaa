"""Command-line flags generated from the fields of an options dataclass, and
the dataclass read back from the parsed flags: one place holds each
setting's default and help (the option classes of
:mod:`mobileone_tf.export.options` and :mod:`mobileone_tf.quantization.options`).

A field declared with :func:`option` carries in its metadata:

* ``help``: the flag's help text;
* ``kind``: ``"bool"``, ``"int"``, ``"float"``, ``"string"``, ``"enum"``
  (with ``choices``) or ``"list"`` (comma-separated strings);
* ``flag``: the flag's name when it differs from the field's (``None``: no flag).

A list flag's empty value becomes the field's default. Flags are absl flags
(``absl.flags.DEFINE_*``). This module imports neither TensorFlow nor absl at
module level.
"""

from __future__ import annotations

import dataclasses

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
        if "kind" in f.metadata and name is not None and (only is None or f.name in only):
            out.append((name, f))
    return out


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
        kind, helptext = f.metadata["kind"], f.metadata["help"]
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
    flag's value becomes a list, an empty one the field's default."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for name, f in flag_fields(cls, only):
        value = fv[name].value
        if f.metadata["kind"] == "list":
            value = list(value) if value else f.default
        values[f.name] = value
    values.update(overrides)
    return cls(**values)
