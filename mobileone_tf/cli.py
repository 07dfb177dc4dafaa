"""What every absl script in ``scripts/`` shares: one error convention, a quiet
TensorFlow start-up, and the flags several scripts take.

A script is a thin shell::

    from absl import flags
    from mobileone_tf import cli

    FLAGS = flags.FLAGS
    cli.define_model_flags()          # --variant, --weights (optional)

    def main(argv):
        from mobileone_tf import ...  # heavy imports inside main: --help stays fast
        ...

    if __name__ == "__main__":
        cli.main(main)

Error convention (:func:`main`): a user error -- a bad flag, a missing or
unreadable file, a wrong variant, an existing output -- prints one line
``error: ...`` on stderr and exits with status 1 (2 for a bad flag), without a
traceback. ``--verbose`` or ``MOBILEONE_TF_DEBUG=1`` shows the traceback.
Anything else (a bug) keeps its traceback.

This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
import os
import sys

# Silence TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing) before
# anything imports TensorFlow; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

USER_ERRORS = (ValueError, OSError, app.UsageError)
"""Exception types that :func:`main` reports as one ``error:`` line.

``OSError`` covers ``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``IsADirectoryError``; the package's own error classes
(e.g. the checkpoint reader's) derive from ``ValueError``.
"""

DEBUG_ENV = "MOBILEONE_TF_DEBUG"

flags.DEFINE_bool("verbose", False, "Show the full traceback of an error "
                  f"(also: {DEBUG_ENV}=1).")


def weights_arg(value):
    """``--weights`` value: ``'none'`` (any case) or empty means random
    initialization (``None``); anything else is returned unchanged
    (``'imagenet'`` or a file path)."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return value


def define_model_flags(variant="s0", weights="imagenet", fused=None):
    """Defines ``--variant`` (s0..s4) and ``--weights`` (and ``--fused`` when
    ``fused`` is a bool: its default)."""
    from mobileone_tf import variants
    flags.DEFINE_enum("variant", variant, sorted(variants.VARIANTS), "MobileOne variant.")
    flags.DEFINE_string("weights", weights, "'imagenet', 'none' (random initialization), a "
                        ".weights.h5, or a PyTorch checkpoint (Apple, timm or mmpretrain).")
    if fused is not None:
        flags.DEFINE_bool("fused", fused, "Use the fused (re-parameterized, inference) form.")


def _debug() -> bool:
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    try:
        return bool(flags.FLAGS.verbose)
    except (flags.UnparsedFlagAccessError, AttributeError):
        return "--verbose" in sys.argv


def error_message(exc: BaseException, limit: int = 600) -> str:
    """The one-line message for a user error: ``str(exc)`` with its lines
    joined by ``"; "``, cut at ``limit`` characters."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(text) > limit:
        text = text[: limit - 30].rstrip() + " ... (--verbose shows all)"
    return text


_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:  # absl's --help exits with status 1; help is not an error
        if e.code == 1 and any(a in _HELP for a in argv[1:]):
            sys.exit(0)
        raise


def import_tensorflow_quietly():
    """Imports TensorFlow with the C++ start-up lines it writes straight to
    file descriptor 2 (oneDNN notice, CUDA probing: printed before absl logging
    is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them) sent to
    ``/dev/null``; Python errors still show. Does nothing when TensorFlow is
    already imported or in debug mode (``--verbose``, ``MOBILEONE_TF_DEBUG=1``)."""
    if "tensorflow" in sys.modules or _debug():
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
            tf.config.list_physical_devices()  # the CUDA probe logs here
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def keras_backend() -> str:
    """The Keras backend this process will use (``KERAS_BACKEND``, else
    ``~/.keras/keras.json``, else TensorFlow), read without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                          "keras.json")
    try:
        with open(config) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def main(fn, tensorflow=True):
    """Runs ``fn(argv)`` under absl with the error convention above and exits
    with its return value (0 when it returns ``None``). With ``tensorflow``
    (scripts that build models), TensorFlow is imported first, quietly
    (:func:`import_tensorflow_quietly`), after the flags are parsed, so
    ``--help`` stays fast. The scripts run on Keras' TensorFlow backend; under
    another (:func:`keras_backend`) they stop with one ``error:`` line, exit 2
    (the library's models, porting, fuse, hub and training run on all three:
    docs/backends.md)."""

    def wrapped(argv):
        backend = keras_backend()
        if backend != "tensorflow":
            print(f"error: {os.path.basename(sys.argv[0])} runs on Keras' TensorFlow backend "
                  f"(KERAS_BACKEND={backend} here): run it with KERAS_BACKEND=tensorflow; "
                  ".keras and .weights.h5 files saved on any backend load there", file=sys.stderr)
            return 2
        try:
            if tensorflow:
                import_tensorflow_quietly()
            status = fn(argv)
        except USER_ERRORS as e:
            if _debug():
                raise
            print(f"error: {error_message(e)}", file=sys.stderr)
            return 2 if isinstance(e, app.UsageError) else 1
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        return 0 if status is None else status

    app.run(wrapped, flags_parser=_parse_flags)
