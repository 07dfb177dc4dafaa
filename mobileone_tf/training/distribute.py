"""``tf.distribute`` strategy by name and the mixed-precision policy."""

import keras
import tensorflow as tf

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training.config import STRATEGIES


@mobileone_export("mobileone_tf.training")
def make_strategy(name: str = "default", tpu: str = ""):
    """``tf.distribute`` strategy by name: default|mirrored|multi_worker|tpu
    (``tpu``: the TPU address for ``TPUClusterResolver``; "" = local/env).

    Raises:
        ValueError: unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}: use {', '.join(STRATEGIES)}.")


@mobileone_export("mobileone_tf.training")
def set_precision(mixed: bool, strategy_name: str = "default") -> str:
    """Sets and returns the global Keras dtype policy: ``mixed_float16`` on
    GPU, ``mixed_bfloat16`` on TPU/CPU, ``float32`` when not ``mixed``. The
    MobileOne softmax head computes in float32 under either mixed policy."""
    if not mixed:
        policy = "float32"
    elif strategy_name == "tpu" or not tf.config.list_physical_devices("GPU"):
        policy = "mixed_bfloat16"
    else:
        policy = "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    return policy
