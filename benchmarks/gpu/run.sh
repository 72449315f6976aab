#!/usr/bin/env bash
# The one GPU run (at most 8.5 minutes): installs the carried wheels, runs the `cuda` tests, then the
# GPU benchmark; everything lands in $OUT (results.md, results.json, pytest.txt, bench.txt, env.txt).
#
#   benchmarks/gpu/run.sh                    # on the GPU machine: needs .gpu-wheels/ (see README)
#   WHEELS=none PYTHON=.venv/bin/python benchmarks/gpu/run.sh --device cpu --quick   # a dry run here
#
# Arguments go to bench_gpu.py. The machine's python3 holds torch; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/vidlstm-gpu}
PYTHON=${PYTHON:-python3}
SITE=/tmp/vidlstm-site
mkdir -p "$OUT" "$SITE/src/vidlstm"
export PYTHONUNBUFFERED=1
# The repo root holds a vidlstm/ without service/ etc.: never let the working directory shadow the tree.
export PYTHONSAFEPATH=1

WHEELS=${WHEELS:-.gpu-wheels}  # WHEELS=none for a dry run on another Python
if [[ $WHEELS != none ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE/lib" "$WHEELS"/*.whl || exit 1
fi
# The package as installed (vidlstm/ plus models/, service/, clients/, tools/), without setuptools.
ln -sf "$PWD"/vidlstm/* "$SITE/src/vidlstm/"
for package in models service clients tools; do ln -sfn "$PWD/$package" "$SITE/src/vidlstm/$package"; done
export PYTHONPATH="$SITE/src:$SITE/lib${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PYTHON" -c "import torch, grpc, google.protobuf as p, vidlstm.service; print('torch', torch.__version__, 'grpc', grpc.__version__, 'protobuf', p.__version__)"
    nproc
} 2>&1 | tee "$OUT/env.txt"

test_device=cuda
[[ " $* " == *" --device cpu "* ]] && test_device=cpu
VIDLSTM_TEST_DEVICE=$test_device timeout 180 "$PYTHON" -m pytest tests/test_cuda.py -m cuda -q -rA \
    --import-mode=append -p no:cacheprovider -W default 2>&1 | grep -v "^DEBUG" | tail -150 | tee "$OUT/pytest.txt"

timeout 330 "$PYTHON" benchmarks/gpu/bench_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.txt"
