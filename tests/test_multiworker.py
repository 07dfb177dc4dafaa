"""Multi-worker training on one machine: ``MultiWorkerMirroredStrategy`` with 2
and 3 worker processes on 127.0.0.1 (each its own ``TF_CONFIG``, free ports),
running :func:`mobileone_tf.training.train` on a small network of branched
MobileOneBlocks (tests/multiworker_worker.py), against a single-process run
on the same global batches (the independent reference: no strategy, no
collectives, plain BatchNorm moments).

Checked: identical weights on every worker, equal (float tolerance) to the
single process; each example consumed once per epoch across workers, and
global batch t = batch t of the single process (counted from indices the
model itself received); synchronized BatchNorm statistics; only the chief
writes the run files; a worker killed mid-epoch, then the cluster restarted
with ``resume``: the run continues from the last completed epoch and ends at
the same epoch count with no example lost or repeated, starting bit for bit
from the weights the chief saved at the end of the last completed epoch.

About 1.5-2.5 min on 2 cores (10 worker processes; TensorFlow's import and
the small train step dominate). Every process is killed in ``finally``.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH = 48, 12           # 4 global batches an epoch; 12 = 6 x 2 = 4 x 3
STEPS = N // BATCH
TIMEOUT_S = 300             # a launch that takes longer hangs: all are killed
RUN_FILES = {"summary.json", "fused.keras", "log.csv", "best.weights.h5", "last.weights.h5"}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(tmp, runs):
    """Starts one process per ``runs`` entry ``name -> (spec, tf_config or
    None)``, waits for all; returns ``{name: returncode}``. Processes still
    running after TIMEOUT_S, or when anything fails here, are killed."""
    procs = {}
    try:
        for name, (spec, tf_config) in runs.items():
            spec = {**spec, "result": str(tmp / name)}
            (tmp / f"{name}.spec").write_text(json.dumps(spec))
            env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": "",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp / f"{name}.tmp")}
            (tmp / f"{name}.tmp").mkdir()
            env.pop("TF_CONFIG", None)
            if tf_config is not None:
                env["TF_CONFIG"] = json.dumps(tf_config)
            with open(tmp / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "tests.multiworker_worker", str(tmp / f"{name}.spec")],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return {name: p.wait(timeout=TIMEOUT_S) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def _cluster(names, spec, **per_worker):
    """``{name: (spec, TF_CONFIG)}`` for one cluster of workers on free
    ports (worker 0 is the chief); ``per_worker[name]`` updates a spec."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(len(names))]
    return {name: ({**spec, **per_worker.get(name, {})},
                   {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
            for i, name in enumerate(names)}


def _check_ok(tmp, codes):
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        tails = {n: (tmp / f"{n}.log").read_text()[-3000:] for n in bad}
        pytest.fail(f"worker(s) failed {bad}:\n" + "\n".join(
            f"--- {n} ---\n{t}" for n, t in tails.items()))


def _result(tmp, name):
    result = json.loads((tmp / name).read_text())
    result["weights"] = dict(np.load(str(tmp / f"{name}.npz")))
    result["records"] = _records(tmp, name)
    return result


def _records(tmp, name):
    """``{epoch: [indices of step 0, step 1, ...]}`` this process consumed."""
    out = {}
    for line in (tmp / f"{name}.records").read_text().splitlines():
        epoch, indices = json.loads(line)
        out.setdefault(epoch, []).append(indices)
    return out


def _spec(output_dir, **kw):
    return {"strategy": "multi_worker", "epochs": 2, "batch": BATCH, "n": N,
            "sync_bn": True, "ema": 0.9, "output_dir": str(output_dir), **kw}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch: the single-process reference (plain BatchNorm), a 2-worker
    cluster (global batches split by tf.data's DATA auto-shard policy) and a
    3-worker cluster (train_fn shards per worker through an InputContext),
    both with synchronized BatchNorm; EMA on, same seed, same global batches."""
    tmp = tmp_path_factory.mktemp("multiworker")
    jobs = {"ref": (_spec(tmp / "ref_run", strategy="default", sync_bn=False), None)}
    jobs.update(_cluster(["a0", "a1"], _spec(tmp / "run2")))
    jobs.update(_cluster(["b0", "b1", "b2"], _spec(tmp / "run3", input_context=True)))
    codes = _launch(tmp, jobs)
    _check_ok(tmp, codes)
    return tmp, {name: _result(tmp, name) for name in jobs}


def _check_cluster(tmp, results, names, run_dir):
    ref = results["ref"]
    workers = [results[n] for n in names]
    k = len(names)
    # roles from TF_CONFIG: worker 0 is the chief
    assert [w["role"] for w in workers] == [["worker", i, k, i == 0] for i in range(k)]
    assert all(w["synchronized"] == [True, True, True] for w in workers)
    # every variable (BatchNorm moving statistics included) identical on every worker ...
    for w in workers[1:]:
        assert w["weights"].keys() == workers[0]["weights"].keys()
        for name, value in workers[0]["weights"].items():
            np.testing.assert_array_equal(w["weights"][name], value, err_msg=name)
    # ... and equal to the single process on the same global batches (seen: 3e-5)
    for name, value in ref["weights"].items():
        np.testing.assert_allclose(workers[0]["weights"][name], value, rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    # each example once per epoch; global batch t = the single process's batch t
    for epoch in range(2):
        steps = [w["records"][epoch] for w in workers]
        assert all(len(s) == STEPS and all(len(b) == BATCH // k for b in s) for s in steps)
        consumed = sorted(i for s in steps for b in s for i in b)
        assert consumed == list(range(N)), f"epoch {epoch}: {consumed}"
        for t in range(STEPS):
            assert sorted(i for s in steps for i in s[t]) == sorted(ref["records"][epoch][t])
    # one writer: the chief's run files only; other workers wrote into their
    # own temporary folder (seen at the end of training), gone afterwards
    assert set(os.listdir(run_dir)) - {"logs"} == RUN_FILES
    log = (run_dir / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]   # one CSVLogger wrote
    assert workers[0]["worker_dirs"] == {}
    for i, (name, w) in enumerate(zip(names[1:], workers[1:]), 1):
        (folder, files), = w["worker_dirs"].items()
        assert folder.startswith(f"mobileone_tf-worker{i}-")
        assert {"log.csv", "last.weights.h5"} <= set(files)
        assert os.listdir(tmp / f"{name}.tmp") == []
    for w in workers:
        assert w["summary"]["epochs"] == 2 and w["summary"]["resumed_at_epoch"] is None


def test_two_workers_equal_a_single_process(runs):
    tmp, results = runs
    _check_cluster(tmp, results, ["a0", "a1"], tmp / "run2")


def test_three_workers_sharded_by_input_context(runs):
    tmp, results = runs
    _check_cluster(tmp, results, ["b0", "b1", "b2"], tmp / "run3")


def test_killed_worker_resumes_from_last_epoch(tmp_path):
    """Worker 1 is SIGKILLed in epoch 1 (after its batch 1); the chief stops
    by itself (the coordination service misses the heartbeats, ~10 s);
    the cluster restarted with ``resume`` continues at epoch 1 from the
    chief's backup and ends at epoch 3. Plain (per-worker) BatchNorm here:
    trained weights stay identical, moving statistics differ per worker."""
    out = tmp_path / "run"
    spec = _spec(out, epochs=3, sync_bn=False, ema=0.0, snapshots=True)
    codes = _launch(tmp_path, _cluster(["k0", "k1"], spec, k1={"kill_at": [1, 1]}))
    assert codes["k1"] == -signal.SIGKILL
    assert codes["k0"] != 0, "the chief should fail when a worker is lost"
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert not (out / "summary.json").exists()
    first = [_records(tmp_path, n) for n in ("k0", "k1")]
    assert len(first[1][1]) == 2                       # killed after 2 batches of epoch 1
    saved = dict(np.load(str(tmp_path / "k0.epoch0.npz")))   # the chief at the end of epoch 0
    assert not (tmp_path / "k0.epoch1.npz").exists()

    codes = _launch(tmp_path, _cluster(["r0", "r1"], {**spec, "resume": True}))
    _check_ok(tmp_path, codes)
    again = [_result(tmp_path, n) for n in ("r0", "r1")]
    for r in again:
        assert r["summary"]["epochs"] == 3 and r["summary"]["resumed_at_epoch"] == 1
        assert sorted(r["records"]) == [1, 2]          # epoch 0 was not re-run
    # the resumed cluster starts bit for bit from the chief's weights at the
    # end of epoch 0 (not a fresh model, not the killed epoch 1's steps)
    fresh = dict(np.load(str(tmp_path / "k0.start.npz")))
    starts = [dict(np.load(str(tmp_path / f"{n}.start.npz"))) for n in ("r0", "r1")]
    assert any(not np.array_equal(fresh[n], saved[n]) for n in saved)   # epoch 0 trained
    for n, value in saved.items():
        np.testing.assert_array_equal(starts[0][n], value, err_msg=n)
        if "moving_" not in n:   # worker 1's own BatchNorm statistics: see below
            np.testing.assert_array_equal(starts[1][n], value, err_msg=n)
    log = (out / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1", "2"]
    assert set(os.listdir(out)) - {"logs"} == RUN_FILES   # backup/ removed at the end
    # kept epochs: 0 from the first launch, 1 and 2 from the second: every
    # example exactly once per epoch (the killed epoch 1 is discarded)
    kept = {0: [first[0][0], first[1][0]], 1: [r["records"][1] for r in again],
            2: [r["records"][2] for r in again]}
    for epoch, steps in kept.items():
        assert sorted(i for s in steps for b in s for i in b) == list(range(N)), epoch
    # trained weights identical; per-worker BatchNorm statistics are not
    w0, w1 = (r["weights"] for r in again)
    moving = [n for n in w0 if "moving_" in n]
    for name in set(w0) - set(moving):
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    assert any(not np.array_equal(w0[n], w1[n]) for n in moving)
