"""Int8 quantization of the fused MobileOne: QAT (TFMOT) with distillation.

Quantization-aware training (Jacob et al., CVPR 2018, as implemented by the
TensorFlow Model Optimization Toolkit) of the **fused** graph, the one that
runs on the device:

1. :func:`to_tf_keras` (:mod:`.tfkeras`): check that the Keras 3 model is a
   fused MobileOne (:func:`mobileone_tf.fuse`), rebuild the same graph with
   ``tf_keras`` (TFMOT works only with ``tf_keras``) and copy the weights
   layer by layer;
2. :func:`equalize_activations` (:mod:`.equalization`): optional exact float
   rescaling that equalizes per-channel activation ranges before int8;
3. :func:`quantize` (:mod:`.tfkeras`): ``quantize_apply`` with an output-only
   quantize config for the layers TFMOT does not know;
4. :func:`calibrate_ranges` (:mod:`.calibration`): activation ranges from
   data instead of TFMOT's ``[-6, 6]`` start;
5. :func:`fine_tune` (:mod:`.distillation`): ``fit`` with knowledge
   distillation from the float model, so unlabelled in-domain images suffice;
6. :func:`qat_flatbuffer` (:mod:`.qat`): the full-integer int8 TFLite
   flatbuffer; :func:`quantization_aware_training` runs 1-5 end to end with
   its settings in one :class:`QatOptions` (:mod:`.options`),
   :func:`qat_from_weights` from a variant and weights. Training images
   from a folder: :func:`qat_dataset`. The file itself (staging,
   verification against the QAT model, TFLite metadata, atomic install)
   is written by the export's one TFLite writer:
   ``mobileone_tf.export.qat_to_tflite`` (``scripts/qat.py``).

Post-training quantization (no training) is
``mobileone_tf.export.to_tflite(model, output, quantize="int8",
calibration_data=FOLDER)``.

Importing TFMOT sets ``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` for the whole
process; this package imports it lazily (:func:`load_tfmot`) and restores the
variable, so Keras 3 keeps working in the same process. Importing this package
imports neither TensorFlow nor TFMOT.

All models here output **logits** (the classifier activation is dropped):
the int8 model's argmax is the class; apply a softmax on the host if needed.
Images are NHWC float32 RGB 0..255 (the model normalizes inside) unless the
model was built with ``include_preprocessing=False``.
"""

from mobileone_tf.quantization.bias_correction import correct_bias, int8_weights
from mobileone_tf.quantization.calibration import calibrate_ranges, frozen_ranges
from mobileone_tf.quantization.checks import fused_mobileone
from mobileone_tf.quantization.distillation import (MIX_MODES, check_schedule,
                                                    distillation_loss, fine_tune, mix_images)
from mobileone_tf.quantization.equalization import equalize_activations, take_images
from mobileone_tf.quantization.images import qat_dataset
from mobileone_tf.quantization.options import INT8_IO, QatOptions, qat_options
from mobileone_tf.quantization.qat import (correct_qat_biases, fixed_batch, qat_flatbuffer,
                                           qat_from_weights, qat_inputs,
                                           quantization_aware_training, skipped_report)
from mobileone_tf.quantization.tfkeras import (MissingExtraError, check_qat_dependencies,
                                                load_tfmot, quantize, to_tf_keras)

__all__ = [
    "INT8_IO", "MIX_MODES", "MissingExtraError", "QatOptions", "calibrate_ranges",
    "check_qat_dependencies", "check_schedule", "correct_bias",
    "correct_qat_biases", "distillation_loss",
    "equalize_activations", "int8_weights", "fixed_batch",
    "fine_tune", "frozen_ranges", "fused_mobileone", "load_tfmot", "mix_images",
    "qat_dataset", "qat_flatbuffer", "qat_from_weights", "qat_inputs", "qat_options",
    "quantization_aware_training", "quantize", "skipped_report",
    "take_images", "to_tf_keras",
]
