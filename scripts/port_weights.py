"""Port a PyTorch MobileOne checkpoint to a mobileone_tf ``.weights.h5``.

Thin shell over :mod:`mobileone_tf.porting`: reads the checkpoint safely,
detects the key layout (Apple ml-mobileone, timm, mmpretrain), the variant
and the form (fused / branched), validates every key and shape, and writes
the weights atomically (nothing is written on error).

    python scripts/port_weights.py --checkpoint mobileone_s0.pth.tar \
        [--output checkpoints/mobileone_s0.weights.h5] [--variant s0] [--overwrite]
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.pth, .pth.tar, .pt, .bin, "
                    ".safetensors).", required=True)
flags.DEFINE_string("output", None, "Output .weights.h5 (default: "
                    "checkpoints/<checkpoint name>.weights.h5).")
flags.DEFINE_string("variant", None, "Expected variant s0..s4 (default: detect).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "checkpoints")


def default_output(checkpoint: str) -> str:
    name = os.path.basename(checkpoint)
    for suffix in (".pth.tar", ".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(DEFAULT_DIR, name + ".weights.h5")


def main(argv):
    del argv
    from mobileone_tf import porting

    output = FLAGS.output or default_output(FLAGS.checkpoint)
    if not output.endswith(".weights.h5"):
        print(f"error: --output must end with .weights.h5 (got {output})", file=sys.stderr)
        return 2
    if os.path.exists(output) and not FLAGS.overwrite:
        print(f"error: {output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        result = porting.port_checkpoint(FLAGS.checkpoint, variant=FLAGS.variant)
        porting.write_weights_h5(result.state, output, result.variant, result.form,
                                 source=os.path.basename(FLAGS.checkpoint))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"layout: {result.layout}")
    print(f"variant: {result.variant}")
    print(f"form: {result.form}")
    print(f"classes: {result.classes}")
    print(f"parameters: {porting.count_params(result.state):,}")
    print(f"wrote: {output}")
    return 0


if __name__ == "__main__":
    app.run(main)
