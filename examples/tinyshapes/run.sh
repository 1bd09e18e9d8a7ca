#!/usr/bin/env bash
# The example end to end: train -> distill -> claims -> export (fp32 + int8, verified) -> benchmark.
# Needs: `pip install -e . -e examples/tinyshapes` (from the kdverify checkout) and CIFAR-10 under $KDVERIFY_DATA.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${TINYSHAPES_WORK:-$(mktemp -d)}"
cache="$work/cache"
echo "tinyshapes: working in $work"

kdverify recipes | grep -E "^(name|cifar16)"
kdverify train   --recipe cifar16-teacher --out "$work/teacher.pt"
kdverify distill --teacher "$work/teacher.pt" --recipe cifar16-student-kd --out "$work/student.pt"
kdverify cache-add "$work/teacher.pt" --cache "$cache/models"      # the claims reuse both models instead of
kdverify cache-add "$work/student.pt" --cache "$cache/models"      # training them again
python -m pytest "$here/tests" -m claims -p no:cacheprovider --kd-cache "$cache/models" --kd-report "$work/report" \
    --rootdir "$here"
kdverify export "$work/student.pt" --quantize int8 --out "$work/student.onnx"
kdverify export "$work/teacher.pt" --out "$work/teacher.onnx"
cd "$repo" && python -m pytest benchmarks/test_inference.py --benchmark-only -p no:cacheprovider -q \
    --bench-teacher "$work/teacher.pt" --bench-student "$work/student.pt" --bench-rounds-scale 0.1
