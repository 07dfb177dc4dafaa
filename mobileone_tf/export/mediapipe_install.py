"""Installs MediaPipe's TFLite metadata writer, when the user asks::

    python -m mobileone_tf.export.mediapipe_install

into ``$MOBILEONE_TF_MEDIAPIPE_DIR``, else ``<Keras cache>/mobileone_tf/mediapipe-<version>``
(nothing, when this environment has ``mediapipe``: the ``[metadata]`` extra)
(:func:`mobileone_tf.export.metadata.install_mediapipe`: pip ``--no-deps``
into a folder of its own, since MediaPipe needs absl-py 2.x and TFMOT pins
absl-py below 2). Prints the folder. Errors: one line ``error: ...``, exit
status 1 (:func:`mobileone_tf.cli.main`). Imports no TensorFlow, and nothing
imports this module: it is the command only.
"""

from mobileone_tf import cli


def main(argv):
    from mobileone_tf.export import metadata
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}: the folder is "
                         f"${metadata.ENV_DIR} or the Keras cache")
    folder = metadata.mediapipe_folder()
    if not metadata.installed(folder) and metadata.in_environment():
        print("MediaPipe is installed in this environment (the [metadata] extra): "
              "nothing to install")
        return
    if not metadata.installed(folder):
        print(f"Installing MediaPipe {metadata.MEDIAPIPE_VERSION} (TFLite metadata writer, "
              f"~45 MB download) into {folder} ...", flush=True)
    print(metadata.install_mediapipe())


if __name__ == "__main__":
    cli.main(main, tensorflow=False)
