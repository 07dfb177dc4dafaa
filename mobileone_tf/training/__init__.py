"""Training and fine-tuning MobileOne with Keras ``fit`` (the paper's recipe).

Modules: :mod:`~mobileone_tf.training.config` (:class:`TrainConfig`, the
defaults and the command-line flags; no TensorFlow),
:mod:`~mobileone_tf.training.optim` (schedules, coupled-L2 SGD),
:mod:`~mobileone_tf.training.distribute` (strategy, precision),
:mod:`~mobileone_tf.training.model` (the model to train, source weights),
:mod:`~mobileone_tf.training.callbacks`, :mod:`~mobileone_tf.training.rundir`
(the output folder: overwrite / resume; no TensorFlow),
:mod:`~mobileone_tf.training.multiworker` (chief/worker roles, per-worker
folders, input sharding, the ``fit`` model under ``MultiWorkerMirroredStrategy``),
:mod:`~mobileone_tf.training.onednn` (a crash workaround; no TensorFlow),
:mod:`~mobileone_tf.training.loop` (:func:`train`, :func:`finish`) and
:mod:`~mobileone_tf.training.runner` (:func:`run`: folders in, the command-line
entry).

The names below are resolved on first use (PEP 562): ``from
mobileone_tf.training import TrainConfig`` imports no TensorFlow.

Importing this package on a CPU with AVX512-FP16 sets
``TF_ENABLE_ONEDNN_OPTS=0`` when TensorFlow is not imported yet and the
variable is unset (TensorFlow 2.21's oneDNN crashes in the branched training
step there; :mod:`~mobileone_tf.training.onednn`, ``docs/onednn_crash.md``).
"""

from mobileone_tf import lazy
from mobileone_tf.training import onednn

onednn.avoid_onednn_crash()

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    "TrainConfig": ".config", "DEFAULT_AUGMENT": ".config", "STRATEGIES": ".config",
    "define_flags": ".config", "from_flags": ".config",
    "WarmupCosine": ".optim", "CosineWeightDecay": ".optim", "SGDCoupledL2": ".optim",
    "no_decay_variables": ".optim", "make_optimizer": ".optim",
    "make_strategy": ".distribute", "set_precision": ".distribute",
    "source_state": ".model", "check_weights": ".model", "build_model": ".model",
    "Throughput": ".callbacks", "FailAt": ".callbacks", "StopOnNaN": ".callbacks",
    "SkippedImages": ".callbacks", "make_callbacks": ".callbacks",
    "run_state": ".rundir", "check_output_dir": ".rundir", "clear_run": ".rundir",
    "synchronize_batchnorm": ".model", "worker_role": ".multiworker",
    "MultiWorkerModel": ".multiworker", "avoid_onednn_crash": ".onednn",
    "train": ".loop", "finish": ".loop",
    "run": ".runner", "report": ".runner", "check_data": ".runner", "folder_classes": ".runner",
    "folder_dataset": ".runner",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS)
