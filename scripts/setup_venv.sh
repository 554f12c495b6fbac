#!/usr/bin/env bash
# Creates .venv idempotently: torch 2.13.0 FIRST, then everything else under
# constraints.txt; the torchvision import workaround only where it is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.setup-stamp
# Re-install only when the dependency declarations changed.
want=$(cat pyproject.toml constraints.txt scripts/setup_venv.sh scripts/torchvision_cpu_fix.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0
$PIP install -c constraints.txt -e ".[dev]"
# The official LVIS evaluation (LVISEval), the reference of tests/unit/test_lvis_metrics.py. Without its
# declared dependencies: it lists opencv-python for its visualiser only; numpy, pycocotools and
# matplotlib are already here (pyproject.toml cannot say --no-deps, hence this line).
$PIP install -c constraints.txt --no-deps lvis==0.5.3
# torchvision's CUDA wheel cannot register its fake kernels on a CPU-only torch
# (`operator torchvision::nms does not exist`). Install a .pth hook that defines
# the two missing op schemas, but only if the plain import fails here.
SITE=$($VENV/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$SITE/mammut_torchvision_fix.pth" "$SITE/mammut_torchvision_fix.py"
if ! $VENV/bin/python -c "import torchvision" >/dev/null 2>&1; then
    cp scripts/torchvision_cpu_fix.py "$SITE/mammut_torchvision_fix.py"
    echo "import mammut_torchvision_fix" > "$SITE/mammut_torchvision_fix.pth"
    $VENV/bin/python -c "import torchvision, timm, open_clip" \
        || { echo "setup: torchvision still fails to import after the workaround" >&2; exit 1; }
    echo "setup: installed the torchvision CPU import workaround (see scripts/torchvision_cpu_fix.py)"
fi
echo "$want" > "$STAMP"
