"""The public API, declared where each name is defined (as ``keras_export`` /
``keras_hub_export`` do).

A function or class::

    from mobileone_tf.api_export import mobileone_export

    @mobileone_export("mobileone_tf", "mobileone_tf.models")
    def fuse(model): ...

A value made by a call (the value goes through the second call)::

    MobileOneS0 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s0"))

A constant: one line above its definition, naming it (the value stays as it
is, so a table can change without touching the declaration)::

    mobileone_export("mobileone_tf.models")("HEAD_NAME")
    HEAD_NAME = "predictions"

Each form marks the name public in each named package and returns the object
unchanged (no wrapper, no registry, no import). ``tools/gen_api.py`` reads the
declarations with ``ast`` (nothing is imported) and writes every package
``__init__.py``'s generated block: the lazy table ``_EXPORTS`` (public name ->
defining module, resolved on first use by :func:`mobileone_tf.lazy.exports`)
and ``__all__``. After adding, renaming or removing a declaration run
``python tools/gen_api.py``; ``python tools/gen_api.py --check`` (run by
``tests/test_repo.py``) fails naming a stale ``__init__.py``.

Only module-level definitions count, and the package names must be string
literals naming packages of ``mobileone_tf``. A name is public in a package
only if its users need it there; anything used only inside its own package
stays undeclared (import it from its module).
"""

from __future__ import annotations

PACKAGE = "mobileone_tf"


def mobileone_export(*packages: str):
    """Declares the decorated function / class (or the value passed to the
    returned callable, or the module-level name passed as a string) public in
    ``packages``.

    Args:
        *packages: dotted package names, e.g. ``"mobileone_tf"``,
            ``"mobileone_tf.export"`` (string literals: the generator reads
            them from the source).

    Returns:
        A callable that returns its argument unchanged.

    Raises:
        ValueError: no package, or one outside ``mobileone_tf``.
    """
    bad = [p for p in packages
           if not isinstance(p, str) or (p != PACKAGE and not p.startswith(PACKAGE + "."))]
    if not packages or bad:
        raise ValueError(f"mobileone_export needs package names under {PACKAGE!r}, got "
                         f"{packages!r}")

    def declare(obj):
        return obj

    return declare
