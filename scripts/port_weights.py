"""Port a PyTorch MobileOne checkpoint to a mobileone_tf ``.weights.h5``.

Thin shell over :func:`mobileone_tf.weights.port_to_h5`: reads the checkpoint
safely (no torch, no code from the file runs), detects the key layout (Apple
ml-mobileone, timm, mmpretrain), the variant and the form (fused / branched),
validates every key and shape, and writes the weights atomically. On any
error it prints one ``error:`` line and writes nothing.

    python scripts/port_weights.py --checkpoint mobileone_s0.pth.tar \\
        [--output checkpoints/mobileone_s0.weights.h5] [--variant s0] [--overwrite]
"""

import os

from absl import flags

from mobileone_tf import cli, variants

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (torch.save zip or legacy file: "
                    ".pth, .pth.tar, .pt, .bin; or .safetensors).", required=True)
flags.DEFINE_string("output", None, "Output .weights.h5 (default: "
                    "checkpoints/<checkpoint name>.weights.h5 in the repository).")
flags.DEFINE_enum("variant", None, sorted(variants.VARIANTS),
                  "Expected variant (default: detect from the shapes).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "checkpoints")
SUFFIXES = (".pth.tar", ".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt")


def default_output(checkpoint: str) -> str:
    name = os.path.basename(checkpoint)
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(DEFAULT_DIR, name + ".weights.h5")


def main(argv):
    del argv
    from mobileone_tf import weights

    output = FLAGS.output or default_output(FLAGS.checkpoint)
    result = weights.port_to_h5(FLAGS.checkpoint, output, variant=FLAGS.variant,
                                overwrite=FLAGS.overwrite)
    print(f"layout: {result.layout}")
    print(f"variant: {result.variant}")
    print(f"form: {result.form}")
    print(f"classes: {result.classes}")
    print(f"parameters: {weights.count_params(result.state):,}")
    print(f"wrote: {output}")


if __name__ == "__main__":
    cli.main(main, tensorflow=False)
