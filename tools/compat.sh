#!/usr/bin/env bash
# Version matrix (issue 24): installs the package into a fresh venv per
# TensorFlow/Keras pair and runs the core tests (models, porting vs timm, fuse,
# pyramid features, TFLite export + verify). Not part of the default CI run.
#
#   tools/compat.sh                      # the lowest and the newest supported pair, and
#                                        # the newest with the [metadata] extra (MediaPipe
#                                        # in the venv itself, absl-py 2.x, no [qat])
#   tools/compat.sh 2.20.0:3.15.1        # TF:Keras pairs of your choice
#   tools/compat.sh 2.21.0:3.15.1:metadata   # TF:Keras:EXTRA (EXTRA's own tests)
#   tools/compat.sh 2.20.0:3.15.1:preinstalled  # a venv with only that TensorFlow, then
#                                        # `pip install -e .` must keep it; classify test
#
# The venv sees the host's site-packages only for the reference packages that
# the tests run in subprocesses (torch, torchvision, timm): everything the
# package needs is installed into the venv (--ignore-installed), so the pair
# under test and its resolved dependencies shadow the host's.
# Output: one row per pair (versions, passed/failed, minutes) and logs in
# ${COMPAT_DIR:-/tmp/mobileone_tf_compat}.
set -uo pipefail
cd "$(dirname "$0")/.."
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=("2.16.2:3.15.1" "2.21.0:3.15.1" "2.21.0:3.15.1:metadata")
tests=${COMPAT_TESTS:-"tests/test_models.py tests/test_porting.py tests/test_features.py tests/test_export.py::test_real_s0_tflite_top1_equals_keras"}
out=${COMPAT_DIR:-/tmp/mobileone_tf_compat}
mkdir -p "$out"
# The host's jax (the [jax]/[dev] extra) would leak into the venvs through
# --system-site-packages, and TensorFlow <= 2.18 imports it when present
# (tensorflow/lite/python/util.py), which fails beside their ml_dtypes 0.3:
# a stub that raises ImportError hides it (PYTHONPATH of the test runs).
mkdir -p "$out/hide/jax"
echo 'raise ImportError("jax is hidden from this venv by tools/compat.sh")' > "$out/hide/jax/__init__.py"
printf '| TensorFlow | Keras | extra | install | tests | minutes |\n|---|---|---|---|---|---|\n' > "$out/table.md"
for pair in "${pairs[@]}"; do
  IFS=: read -r tf keras extra <<< "$pair"
  name="$tf-$keras${extra:+-$extra}"; venv="$out/venv-$name"; log="$out/$name.log"
  spec="."; run_tests=$tests
  case "$extra" in
    "") ;;
    metadata) spec=".[metadata]"; run_tests="tests/test_metadata.py tests/test_mediapipe.py";;
    preinstalled) run_tests="tests/test_classify.py";;  # README's first command
    *) spec=".[$extra]";;
  esac
  start=$(date +%s)
  printf 'tensorflow==%s\nkeras==%s\n' "$tf" "$keras" > "$out/constraints-$name.txt"
  # TensorFlow <= 2.18 pins ml_dtypes < 0.5, which onnx >= 1.19 needs (not declared by onnx)
  case "$tf" in 2.1[678].*) echo 'onnx<1.19' >> "$out/constraints-$name.txt";; esac
  if [ "$extra" = preinstalled ]; then
    # the user's TensorFlow first (a venv of its own), then the package without
    # constraints: pip must keep that TensorFlow
    rm -rf "$venv" && python3 -m venv "$venv"
    installed() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('tensorflow'))"; }
    if "$venv/bin/pip" install -q "tensorflow==$tf" > "$log" 2>&1 && before=$(installed) \
         && "$venv/bin/pip" install -e . pytest >> "$log" 2>&1 && [ "$(installed)" = "$before" ] \
         && ! grep -E '^Installing collected packages:.*tensorflow[,-]' "$log"; then
      ok=1; echo "kept tensorflow $before" >> "$log"
    else ok=0; fi
  else
    rm -rf "$venv" && python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --ignore-installed -e "$spec" pytest pytest-xdist hypothesis \
      -c "$out/constraints-$name.txt" > "$log" 2>&1 && ok=1 || ok=0
  fi
  if [ "$ok" = 1 ]; then
    install=ok
    "$venv/bin/python" -c "import tensorflow as t, keras as k; print('versions', t.__version__, k.__version__)" >> "$log" 2>&1
    # shellcheck disable=SC2086
    PYTHONPATH="$out/hide" "$venv/bin/python" -m pytest -q -p no:cacheprovider $run_tests >> "$log" 2>&1
    result=$(grep -E '^[0-9]+ (passed|failed)|(passed|failed).* in ' "$log" | tail -1)
  else
    install=failed; result="not run"
  fi
  minutes=$(( ($(date +%s) - start + 59) / 60 ))
  printf '| %s | %s | %s | %s | %s | %s |\n' "$tf" "$keras" "${extra:-none}" "$install" "$result" "$minutes" | tee -a "$out/table.md"
done
cat "$out/table.md"
