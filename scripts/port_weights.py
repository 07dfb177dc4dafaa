"""Port a PyTorch MobileOne checkpoint (Apple ml-mobileone, timm or
mmpretrain; fused or unfused) to a mobileone_tf ``.weights.h5``.

  python scripts/port_weights.py --checkpoint mobileone_s0.pth.tar \
      --output checkpoints/mobileone_s0.weights.h5 [--variant s0]
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.pth/.pth.tar/.pt/.bin/.safetensors).",
                    required=True)
flags.DEFINE_string("output", None, "Output .weights.h5 (default checkpoints/<name>.weights.h5).")
flags.DEFINE_string("variant", None, "Expected variant s0..s4 (detected from shapes if unset).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")

_CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "checkpoints")


def main(argv):
    del argv
    from mobileone_tf import porting
    output = FLAGS.output
    if output is None:
        base = os.path.basename(FLAGS.checkpoint)
        for ext in (".pth.tar", ".pth", ".pt", ".bin", ".safetensors"):
            if base.endswith(ext):
                base = base[: -len(ext)]
                break
        output = os.path.join(_CHECKPOINTS, base + ".weights.h5")
    if not output.endswith(".weights.h5"):
        raise app.UsageError(f"--output must end with .weights.h5, got {output}")
    if os.path.exists(output) and not FLAGS.overwrite:
        raise app.UsageError(f"{output} exists (use --overwrite to replace it)")
    try:
        port = porting.port_checkpoint(FLAGS.checkpoint, variant=FLAGS.variant)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    porting.write_weights_h5(port.state, output, port.variant, port.form,
                             source=os.path.abspath(FLAGS.checkpoint), overwrite=FLAGS.overwrite)
    n = sum(v.size for v in port.state.values())
    print(f"{FLAGS.checkpoint}: {port.layout} layout, MobileOne-{port.variant.upper()} "
          f"({port.variant}), {port.form}, {port.classes or 'no'} classes, {n:,} values")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
