#!/bin/sh
# Install the policy server alone into a fresh virtual environment: the safepolicy wheel with
# the `server` extra (onnxruntime on CPU) or `server-gpu` (onnxruntime-gpu with its CUDA 13 and
# cuDNN wheels). No torch, no gyms. Versions: everything the lock pins is pinned
# (requirements/lock.txt as constraints), onnxruntime-gpu by requirements/gpu.txt.
#   sh docker/install-server.sh VENV [cpu|gpu]
# The Dockerfiles run exactly this; tests/test_docker.py runs it in a temporary directory.
set -eu
venv="${1:?usage: install-server.sh VENV [cpu|gpu]}"
flavour="${2:-cpu}"
case "$flavour" in
  cpu) extra="server" ;;
  gpu) extra="server-gpu" ;;
  *) echo "install-server.sh: flavour must be cpu or gpu, got '$flavour'" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
python="${PYTHON:-python3.11}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$venv"
pip="$venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# build the wheel from a copy: setuptools writes build/ and *.egg-info into the tree it builds
mkdir "$work/src"
cp -a "$root/pyproject.toml" "$root/README.md" "$root/safepolicy" "$root/training" \
  "$root/export" "$root/server" "$root/audit" "$work/src/"
"$pip" install -q -c "$root/requirements/lock.txt" "setuptools>=64"
"$pip" wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/safepolicy-*.whl)
if [ "$flavour" = gpu ]; then
  "$pip" install -q -c "$root/requirements/lock.txt" -c "$root/requirements/gpu.txt" \
    "$wheel[$extra]" "onnxruntime-gpu[cuda,cudnn]"
else
  "$pip" install -q -c "$root/requirements/lock.txt" "$wheel[$extra]"
fi
"$pip" uninstall -q -y setuptools
# the point of this image: fail the build if a training-only package came along
"$venv/bin/python" - <<'PY'
import importlib.util
import sys

found = [m for m in ("torch", "gymnasium", "safety_gymnasium", "bullet_safety_gym", "dsrl", "h5py")
         if importlib.util.find_spec(m) is not None]
if found:
    sys.exit(f"install-server.sh: training-only packages were installed: {', '.join(found)}")
PY
"$venv/bin/safepolicy" serve --help >/dev/null
echo "installed the safepolicy server ($extra) into $venv"
