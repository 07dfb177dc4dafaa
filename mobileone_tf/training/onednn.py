"""The oneDNN workaround for the branched MobileOne training step (issue 15).

TensorFlow 2.21's oneDNN ("custom operations") kernels crash with a
segmentation fault in the branched MobileOne training step at 128-224 px:
seen on a Xeon with AVX512-FP16/AMX and reproduced on an AMD EPYC with
AVX512-VNNI/BF16; ``TF_ENABLE_ONEDNN_OPTS=0`` (TensorFlow's own kernels)
avoids it, capping oneDNN's ISA (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``, even
``AVX2``) does not. On Linux, TensorFlow turns these kernels on by default
only on CPUs with one of :data:`ONEDNN_DEFAULT_FLAGS` (TensorFlow 2.21,
``tensorflow/core/util/port.cc``, ``DefaultOneDnnPolicy``): a Xeon without
them (tested: no VNNI) never runs them, which is why the crash looked
CPU-specific. See ``docs/onednn_crash.md`` (versions, reproducer).

TensorFlow reads the variable once, when it is imported, so
:func:`avoid_onednn_crash` runs when :mod:`mobileone_tf.training` is
imported, before TensorFlow where possible (``scripts/train.py`` imports it
first). This module imports neither TensorFlow nor Keras.
"""

import logging
import os
import sys

logger = logging.getLogger("mobileone_tf.training")

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                        "amx_bf16")
"""``/proc/cpuinfo`` flags with which TensorFlow (Linux x86) enables oneDNN by default."""


def cpu_flags(cpuinfo="/proc/cpuinfo") -> set:
    """The CPU feature flags (Linux ``/proc/cpuinfo``: the ``flags`` line of
    the first processor); an empty set where the file cannot be read (other
    operating systems)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def avoid_onednn_crash(cpuinfo="/proc/cpuinfo", environ=None, modules=None) -> str:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=0`` where TensorFlow would turn its oneDNN
    kernels on by default (a CPU with one of :data:`ONEDNN_DEFAULT_FLAGS`),
    when the user has not set the variable and TensorFlow is not imported
    yet, with one warning line on the ``mobileone_tf.training`` logger.

    Args:
        cpuinfo: the ``/proc/cpuinfo`` to read (tests pass a fake one).
        environ: the environment to change (default ``os.environ``).
        modules: the imported modules (default ``sys.modules``).

    Returns:
        ``"set"`` (the variable was set), ``"too late"`` (TensorFlow was
        imported first: a warning says what to do), ``"user"`` (the user's
        own value is kept) or ``"not needed"`` (oneDNN is off by default on
        this CPU, or the CPU flags cannot be read).
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if not cpu_flags(cpuinfo) & set(ONEDNN_DEFAULT_FLAGS):
        return "not needed"
    if VARIABLE in environ:
        return "user"
    reason = ("TensorFlow's oneDNN kernels, on by default on this CPU, crash in the branched "
              "MobileOne training step (docs/onednn_crash.md)")
    if "tensorflow" in modules:
        logger.warning("%s; TensorFlow was imported before mobileone_tf.training: set %s=0 "
                       "before starting Python to avoid it", reason, VARIABLE)
        return "too late"
    environ[VARIABLE] = "0"
    logger.warning("%s=0 set: %s; set the variable yourself to override", VARIABLE, reason)
    return "set"
