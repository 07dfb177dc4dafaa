"""Image data: listing, decoding, transforms and ``tf.data`` pipelines.

* :mod:`~mobileone_tf.data.listing` -- ``IMAGE_EXTENSIONS`` (the package's one
  list), ``list_images``, ``list_image_folders`` / ``select_paths`` (several
  folders, glob include/exclude), ``list_examples`` (``labels.csv`` or ImageFolder,
  label range checks), ``read_class_index``, ``is_synset_folder``.
* :mod:`~mobileone_tf.data.decode` -- ``open_image`` (the one file reader,
  ``ImageDecodeError`` naming the file), the in-graph ``decode_image``,
  ``check_images`` / ``check_image_folder``, ``describe_skipped``.
* :mod:`~mobileone_tf.data.transforms` -- the torchvision-equal eval transform
  (PIL; ``load_image(s)``: files to float32 arrays) and its in-graph twin,
  ``random_resized_crop``, ``random_crop_flip``.
* :mod:`~mobileone_tf.data.pipelines` -- ``eval_dataset``, ``train_dataset``,
  TFRecord readers, ``image_folder_dataset``, ``find_undecodable``,
  ``image_batches`` (numpy batches of a folder).

Importing this package imports no TensorFlow: names resolve on first use
(listing and decode need none; transforms and pipelines do).
"""

from mobileone_tf import lazy

_EXPORTS = {
    **dict.fromkeys((
        "ImageDecodeError", "check_image_folder", "check_images", "decode_image",
        "describe_skipped", "open_image"), ".decode"),
    **dict.fromkeys((
        "IMAGE_EXTENSIONS", "ImageFolders", "LABELS_CSV", "class_names", "image_folders",
        "is_image_file",
        "is_synset_folder", "list_examples", "list_image_folders", "list_images",
        "read_class_index", "select_paths"), ".listing"),
    **dict.fromkeys((
        "count_records", "eval_dataset", "find_undecodable", "image_batches",
        "image_folder_dataset", "is_tfrecord_source", "tfrecord_eval_dataset",
        "tfrecord_files", "train_dataset"), ".pipelines"),
    **dict.fromkeys((
        "center_crop", "eval_transform", "load_image", "load_images",
        "pil_eval_transform", "random_crop_flip", "random_resized_crop",
        "resize_shorter_side"), ".transforms"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS)
