"""Fine-tuning a DeepLabV3+ segmenter (:func:`mobileone_tf.segmentation.build_segmenter`)
on image/mask folders (CamVid layout, :mod:`.data`) with Keras ``fit``: a
progress bar, ``BackupAndRestore`` checkpoints and resume, ``best`` (by
validation mIoU) and ``last`` weights, then the test scores of the fused
model.

Recipe (defaults of :class:`SegConfig`): AdamW (lr 1e-3 for the head, same
for the encoder, weight decay 1e-4), cosine decay to 0 over all steps, batch
8, random scale 0.75-1.25, random crop 384x480 (CamVid's 360x480 padded to a
multiple of 32, padding ignored), horizontal flip; cross-entropy with the void
class ignored. The output folder follows :mod:`mobileone_tf.training.rundir`
(``--resume``, ``--overwrite``); ``summary.json`` is written last.

Before anything is built or written, every image of every split is fully
decoded and every mask read and checked (:func:`.data.check_masks`): a bad
file stops the run at once, by name. A run records its flags
(:data:`RUN_CONFIG`, all of :class:`SegConfig`) when it starts writing;
``--resume`` refuses any flag of :class:`SegConfig` that differs from that
record (none may change: only ``--data`` and ``--output_dir`` are not
recorded). A run that fails before its first epoch completed removes what it
wrote (a new or overwritten run: nothing is left to resume).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from mobileone_tf import fileio
from mobileone_tf.segmentation import data as seg_data
from mobileone_tf.segmentation import metrics as seg_metrics
from mobileone_tf.segmentation import weighting as seg_weighting
from mobileone_tf.segmentation.model import build_segmenter, check_size

RUN_CONFIG = "run_config.json"
"""The flags of the run in an output folder (:class:`SegConfig` as JSON),
written when the run starts writing; ``--resume`` compares with it."""


@dataclasses.dataclass
class SegConfig:
    """Everything a segmentation run depends on (``summary.json`` records it)."""
    backbone: str = "mobileone_s0"
    weights: str | None = None  # MobileOne checkpoint, or None / "imagenet" (MobileNetV3)
    num_classes: int = len(seg_data.CAMVID_CLASSES)
    ignore_class: int = seg_data.CAMVID_IGNORE
    crop_size: tuple = (384, 480)
    scale_min: float = 0.75
    scale_max: float = 1.25
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    fused: bool = False
    freeze_stages: int = 0
    norm_eval: bool = False
    limit: int = 0  # images per split (0: all); for smoke tests
    seed: int = 0
    class_weights: str = "none"  # none, median_frequency, enet, or a JSON file (weighting)

    def check(self):
        """Raises ValueError naming the bad field."""
        check_size(self.crop_size, "--crop_size")
        for name in ("epochs", "batch_size", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1; got {getattr(self, name)}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"--scale_min/--scale_max: need 0 < min <= max; got "
                             f"{self.scale_min}, {self.scale_max}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0; got {self.learning_rate}")
        if self.weights and self.weights != "imagenet" and not os.path.isfile(self.weights):
            raise FileNotFoundError(f"--weights {self.weights}: no such file")
        if self.class_weights not in seg_weighting.CLASS_WEIGHTINGS:
            seg_weighting.read_class_weights(self.class_weights, self.num_classes)
        return self

    def record(self):
        """The JSON dict :data:`RUN_CONFIG` holds (``weights``: an absolute path)."""
        out = json.loads(json.dumps(dataclasses.asdict(self)))
        if out["weights"] and out["weights"] != "imagenet":
            out["weights"] = os.path.abspath(out["weights"])
        if out["class_weights"] not in seg_weighting.CLASS_WEIGHTINGS:
            out["class_weights"] = os.path.abspath(out["class_weights"])
        return out


def _show(name, value):
    if name == "crop_size":
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def check_resume(config, output_dir):
    """Raises ValueError when ``config`` differs from the flags recorded by
    the run in ``output_dir`` (:data:`RUN_CONFIG`), naming every differing
    flag in one line, e.g. ``"the run was fused: add --fused; --epochs was
    2, not 3"``; also when there is no record."""
    path = os.path.join(os.fspath(output_dir), RUN_CONFIG)
    try:
        with open(path) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--resume: {output_dir} holds no {RUN_CONFIG} (the flags of its run "
                         "are unknown); pass --overwrite to start over") from None
    except ValueError as e:
        raise ValueError(f"{path}: unreadable ({e}); pass --overwrite to start over") from None
    given, diffs = config.record(), []
    for name in given:
        old, new = recorded.get(name), given[name]
        if old == new:
            continue
        if isinstance(new, bool):
            was, was_not = (("was fused", "was not fused") if name == "fused"
                            else (f"used --{name}", f"did not use --{name}"))
            diffs.append(f"the run {was}: add --{name}" if old
                         else f"the run {was_not}: drop --{name}")
        else:
            diffs.append(f"--{name} was {_show(name, old)}, not {_show(name, new)}")
    if diffs:
        raise ValueError(f"--resume: flags differ from the run in {output_dir}: "
                         + "; ".join(diffs) + " (a resumed run keeps all its flags; "
                         "--overwrite starts over)")


def _optimizer(config, steps):
    import keras
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1))
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)


def run(config, data_dir, output_dir, *, overwrite=False, resume=False, callbacks=()):
    """Trains, keeps the best weights by validation mIoU, scores the test set.

    Args:
        config: :class:`SegConfig`.
        data_dir: folder with ``images/``, ``masks/``, ``splits/`` (CamVid
            layout; a ``val`` split is optional).
        output_dir: run folder (:mod:`mobileone_tf.training.rundir` rules).
        callbacks: extra Keras callbacks (tests).

    Returns:
        The summary dict (also ``summary.json``): ``test`` scores
        (:func:`.metrics.scores`), ``val`` scores, ``train_seconds``,
        ``epoch_seconds``, ``images_per_sec``, ``config``.

    Raises:
        ValueError: a bad config, a mask value outside the classes (named),
            a size not divisible by 32, ``resume`` with flags that differ
            from the run's (:func:`check_resume`).
        mobileone_tf.data.ImageDecodeError: an undecodable image or mask
            (named). FileExistsError / FileNotFoundError: see
            :func:`mobileone_tf.training.check_output_dir`, missing files.
    """
    from mobileone_tf import training
    from mobileone_tf.training import rundir
    config.check()
    action = training.check_output_dir(output_dir, overwrite=overwrite, resume=resume)
    if action == "resume":
        check_resume(config, output_dir)
    splits = {s: seg_data.split_pairs(data_dir, s, config.limit) for s in ("train", "test")}
    if os.path.isfile(os.path.join(data_dir, "splits", "val.txt")):
        splits["val"] = seg_data.split_pairs(data_dir, "val", config.limit)
    steps = len(splits["train"]) // config.batch_size
    if steps < 1:
        raise ValueError(f"--batch_size {config.batch_size} is larger than the "
                         f"{len(splits['train'])} training images")
    sizes = [seg_data.check_masks(pairs, config.num_classes, config.ignore_class)
             for pairs in splits.values()]
    eval_size = seg_data.padded_size(max(h for h, _ in sizes), max(w for _, w in sizes))

    weights = seg_weighting.class_weights(
        config.class_weights, (seg_data.read_mask(m) for _, m in splits["train"]),
        config.num_classes, config.ignore_class)

    import keras
    keras.utils.set_random_seed(config.seed)
    crop = check_size(config.crop_size)
    train_ds = seg_data.train_dataset(splits["train"], crop, config.batch_size,
                                      config.ignore_class, (config.scale_min, config.scale_max),
                                      config.seed, num_classes=config.num_classes)
    model = build_segmenter(config.backbone, config.num_classes, crop,
                            weights=config.weights, fused=config.fused,
                            freeze_stages=config.freeze_stages, norm_eval=config.norm_eval)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=config.ignore_class) if weights is None \
        else seg_weighting.weighted_cross_entropy(weights, config.ignore_class)
    model.compile(optimizer=_optimizer(config, steps * config.epochs), loss=loss,
                  metrics=[seg_metrics.mean_iou_metric(config.num_classes,
                                                       config.ignore_class)])
    # the model is built (weights read) before anything is written
    if action == "overwrite":
        training.clear_run(output_dir)
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if action != "resume":
        fileio.write_json(config.record(), os.path.join(output_dir, RUN_CONFIG))
    done = rundir.backup_epoch(output_dir) if action == "resume" else 0
    rows = rundir.truncate_log(output_dir, done)
    val_ds = None
    if "val" in splits:  # validated at the crop size (the model's): padded or cropped there
        val_ds = seg_data.eval_dataset(splits["val"], crop, config.batch_size,
                                       config.ignore_class, crop_larger=True,
                                       num_classes=config.num_classes)
    monitor = "val_mean_iou" if val_ds is not None else "mean_iou"
    best = max((float(r[monitor]) for r in rows if r.get(monitor)), default=None)
    cbs, throughput, guard = training.make_callbacks(
        output_dir, batch_size=config.batch_size, ema=False, monitor=monitor,
        best_so_far=best, extra=callbacks)
    start = time.time()
    try:
        model.fit(train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=cbs,
                  shuffle=False, verbose=1 if os.isatty(1) else 2)  # tf.data shuffles
    except BaseException:
        if action != "resume" and rundir.backup_epoch(output_dir) == 0:
            _remove_run(output_dir, created)  # nothing to resume: leave nothing behind
        raise
    train_seconds = time.time() - start
    if guard.diverged_at is not None:
        raise RuntimeError(f"training diverged (NaN loss) at epoch/batch {guard.diverged_at}")
    return finish(model, config, splits, eval_size, output_dir, train_seconds,
                  throughput.history, done, weights)


def _remove_run(output_dir, created):
    """Removes the run files of a run that failed before its first epoch
    (and the folder when this run created it and it is empty); a failure
    here never hides the run's own error."""
    from mobileone_tf import training
    try:
        training.clear_run(output_dir)
        record = os.path.join(output_dir, RUN_CONFIG)
        if os.path.exists(record):
            os.remove(record)
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
    except OSError:
        pass


def finish(model, config, splits, eval_size, output_dir, train_seconds, images_per_sec,
           resumed_from, class_weights=None):
    """Best weights -> fused model (``fused.keras``) -> test/val scores ->
    ``summary.json`` (written last: the run is finished)."""
    import mobileone_tf as mo
    from mobileone_tf.training import rundir
    best = os.path.join(output_dir, "best.weights.h5")
    if os.path.isfile(best):
        model.load_weights(best)
    fused = mo.fuse(model) if config.backbone.startswith("mobileone_") else model
    if tuple(eval_size) != tuple(model.inputs[0].shape[1:3]):  # same weights, full-size input
        full = build_segmenter(config.backbone, config.num_classes, eval_size,
                               fused=config.backbone.startswith("mobileone_"))
        full.set_weights(fused.get_weights())
        fused = full
    fused.save(os.path.join(output_dir, "fused.keras"))
    names = seg_data.CAMVID_CLASSES if config.num_classes == len(seg_data.CAMVID_CLASSES) \
        else None
    result = {}
    for split in ("val", "test"):
        if split in splits:
            ds = seg_data.eval_dataset(splits[split], eval_size, config.batch_size,
                                       config.ignore_class, num_classes=config.num_classes)
            t = time.time()
            result[split] = seg_metrics.evaluate(fused, ds, config.num_classes,
                                                 config.ignore_class, names)
            result[split]["images"] = len(splits[split])
            result[split]["seconds"] = round(time.time() - t, 1)
    log = rundir.read_log(output_dir)
    summary = {**result, "train_seconds": round(train_seconds, 1),
               "epochs_run_here": config.epochs - resumed_from,
               "epoch_seconds": round(train_seconds / max(config.epochs - resumed_from, 1), 1),
               "images_per_sec": [round(v, 2) for v in images_per_sec],
               "log_rows": len(log), "config": dataclasses.asdict(config),
               "class_weights": (None if class_weights is None
                                 else [round(float(w), 6) for w in class_weights])}
    fileio.write_json(summary, os.path.join(output_dir, rundir.SUMMARY))
    return summary


def report(summary):
    """The summary without the per-epoch lists (what the script prints)."""
    out = {k: v for k, v in summary.items() if k not in ("images_per_sec",)}
    return json.loads(json.dumps(out))
