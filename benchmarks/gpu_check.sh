#!/usr/bin/env bash
# On a machine with a GPU: run minilm's test suite with the device-aware tests on the GPU, then every lab
# in full mode, and print each lab's wall time and graded summary (its final figures are in the saved notebook).
#
#   bash benchmarks/gpu_check.sh            # tests, then every lab in full mode
#   bash benchmarks/gpu_check.sh 00 03      # tests, then labs 00 and 03 only
#
# Environment:
#   GPU_CHECK_TESTS=0          skip the test suite
#   GPU_CHECK_LABS=0           skip the labs
#   GPU_CHECK_LAB_TIMEOUT=1800 seconds allowed per lab (a lab past it is stopped and reported as such)
#   GPU_CHECK_DEVICE=cuda      the device under test (cuda or mps); GPU_CHECK_ALLOW_CPU=1 runs the script on a
#                              machine without one (a dry run of the script itself, everything on the CPU)
#   OUT                        where logs and executed notebooks go (default artifacts/gpu_check)
# Packages the machine lacks (JupyterLab's kernel and nbclient, for the labs) are installed from wheels in .whl/
# when that folder exists: benchmarks/gpu_wheels.sh downloads them on a machine with network access.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/minilm-site .whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl/ failed"; exit 1; }
  export PYTHONPATH="/tmp/minilm-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# minilm from this checkout, whether or not it is pip-installed here
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

DEVICE=${GPU_CHECK_DEVICE:-cuda}
"$PY" - "$DEVICE" <<'PY' || { [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] && DEVICE=cpu && echo "gpu_check: dry run on the CPU"; } || exit 1
import sys, torch
dev = sys.argv[1]
ok = torch.cuda.is_available() if dev == "cuda" else bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
name = torch.cuda.get_device_name(0) if ok and dev == "cuda" else dev
print(f"gpu_check: torch {torch.__version__}, device {dev}: {'found, ' + name if ok else 'NOT available'}")
sys.exit(0 if ok else 1)
PY
"$PY" -m minilm info 2>&1 | tee "$OUT/info.txt"
nproc_=$(nproc 2>/dev/null || echo 2)
workers=$(( nproc_ > 8 ? 8 : (nproc_ > 1 ? nproc_ : 1) ))

status=0
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
  echo "== tests: device-aware tests on $DEVICE, the rest as usual ($workers processes; browser tests skipped)"
  ndev=$(MINILM_TEST_DEVICE=$DEVICE "$PY" -m pytest -q --collect-only -p no:cacheprovider -m device 2>/dev/null | tail -n 1)
  echo "   on $DEVICE: $ndev (the tests that take the \`device\` fixture)"
  t0=$(date +%s)
  MINILM_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -n "$workers" -p no:cacheprovider -m "not browser and not slow" \
    2>&1 | tee "$OUT/tests.log" | tail -n 25
  rc=${PIPESTATUS[0]}
  echo "== tests: exit status $rc in $(( $(date +%s) - t0 )) s (whole log: $OUT/tests.log)"
  [ "$rc" = 0 ] || status=1
fi

if [ "${GPU_CHECK_LABS:-1}" != 0 ]; then
  labs=("$@")
  if [ ${#labs[@]} = 0 ]; then
    mapfile -t labs < <("$PY" -c "from minilm.labs import list_labs; print('\n'.join(l.lab_id for l in list_labs()))")
  fi
  summary="$OUT/labs_summary.txt"
  : > "$summary"
  for lab in "${labs[@]}"; do
    echo "== lab $lab, full mode, on $DEVICE"
    t0=$(date +%s)
    timeout "${GPU_CHECK_LAB_TIMEOUT:-1800}" "$PY" -m minilm lab run "$lab" --full --out "$OUT/lab_${lab}_full.ipynb" \
      > "$OUT/lab_${lab}.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    case $rc in 0) verdict=ok ;; 124) verdict="stopped after ${GPU_CHECK_LAB_TIMEOUT:-1800} s" ; status=1 ;; *) verdict="failed ($rc)"; status=1 ;; esac
    { echo "lab $lab: $verdict, wall time ${secs} s"; tail -n 20 "$OUT/lab_${lab}.log" | sed 's/^/    /'; } | tee -a "$summary"
  done
fi
echo "gpu_check: done (status $status); logs and executed notebooks in $OUT"
exit $status
