#!/usr/bin/env bash
# Version matrix (issue 24): installs the package into a fresh venv per
# TensorFlow/Keras pair and runs the core tests (models, porting vs timm, fuse,
# pyramid features, TFLite export + verify). Not part of the default CI run.
#
#   tools/compat.sh                      # the lowest and the newest supported pair
#   tools/compat.sh 2.20.0:3.15.1        # TF:Keras pairs of your choice
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
[ ${#pairs[@]} -gt 0 ] || pairs=("2.16.2:3.15.1" "2.21.0:3.15.1")
tests=${COMPAT_TESTS:-"tests/test_models.py tests/test_porting.py tests/test_features.py tests/test_export.py::test_real_s0_tflite_top1_equals_keras"}
out=${COMPAT_DIR:-/tmp/mobileone_tf_compat}
mkdir -p "$out"
printf '| TensorFlow | Keras | install | core tests | minutes |\n|---|---|---|---|---|\n' > "$out/table.md"
for pair in "${pairs[@]}"; do
  tf=${pair%%:*}; keras=${pair##*:}; venv="$out/venv-$tf-$keras"; log="$out/$tf-$keras.log"
  start=$(date +%s)
  rm -rf "$venv" && python3 -m venv --system-site-packages "$venv"
  printf 'tensorflow==%s\nkeras==%s\n' "$tf" "$keras" > "$out/constraints-$tf-$keras.txt"
  # TensorFlow <= 2.18 pins ml_dtypes < 0.5, which onnx >= 1.19 needs (not declared by onnx)
  case "$tf" in 2.1[678].*) echo 'onnx<1.19' >> "$out/constraints-$tf-$keras.txt";; esac
  if "$venv/bin/pip" install -q --ignore-installed -e . pytest pytest-xdist hypothesis \
       -c "$out/constraints-$tf-$keras.txt" > "$log" 2>&1; then
    install=ok
    "$venv/bin/python" -c "import tensorflow as t, keras as k; print('versions', t.__version__, k.__version__)" >> "$log" 2>&1
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests >> "$log" 2>&1
    result=$(grep -E '^[0-9]+ (passed|failed)|(passed|failed).* in ' "$log" | tail -1)
  else
    install=failed; result="not run"
  fi
  minutes=$(( ($(date +%s) - start + 59) / 60 ))
  printf '| %s | %s | %s | %s | %s |\n' "$tf" "$keras" "$install" "$result" "$minutes" | tee -a "$out/table.md"
done
cat "$out/table.md"
