#!/bin/sh
# Install the training/audit stack (torch, the safety gyms, the server) into a fresh virtual
# environment, exactly as pinned by requirements/lock.txt. The lock is installed with --no-deps
# because the published pins of safety-gymnasium, gymnasium-robotics and dsrl conflict
# (requirements/README.md); the lock is the complete resolved closure, so nothing is missing.
#   sh docker/install-trainer.sh VENV [cpu|cuda]
# torch: the lock pins the CPU build (torch==2.13.0+cpu, from https://download.pytorch.org/whl/cpu
# or a local mirror). `cuda` installs torch==2.13.0 from PyPI instead, which on Linux x86_64 is
# the CUDA build and pulls its nvidia-* CUDA wheels (with their dependencies, unlike the rest).
# TORCH_INDEX_URL overrides where the CPU build comes from.
set -eu
venv="${1:?usage: install-trainer.sh VENV [cpu|cuda]}"
flavour="${2:-cpu}"
root=$(cd "$(dirname "$0")/.." && pwd)
python="${PYTHON:-python3.11}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$flavour" in cpu|cuda) ;; *) echo "install-trainer.sh: flavour must be cpu or cuda" >&2; exit 2 ;; esac

"$python" -m venv "$venv"
pip="$venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
grep -v -E '^torch==' "$root/requirements/lock.txt" > "$work/lock-without-torch.txt"
torch_pin=$(grep -E '^torch==' "$root/requirements/lock.txt")
if [ "$flavour" = cuda ]; then
  "$pip" install -q "${torch_pin%%+*}"
else
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$pip" install -q --no-deps --index-url "$TORCH_INDEX_URL" "$torch_pin"
  else
    "$pip" install -q --no-deps --extra-index-url https://download.pytorch.org/whl/cpu "$torch_pin"
  fi
fi
"$pip" install -q --no-deps -r "$work/lock-without-torch.txt"
mkdir "$work/src"
cp -a "$root/pyproject.toml" "$root/README.md" "$root/safepolicy" "$root/training" \
  "$root/export" "$root/server" "$root/audit" "$work/src/"
"$pip" wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
"$pip" install -q --no-deps "$work"/dist/safepolicy-*.whl
"$venv/bin/python" -c "import torch, gymnasium, bullet_safety_gym, onnxruntime; print('torch', torch.__version__, 'cuda build' if torch.version.cuda else 'cpu build')"
"$venv/bin/safepolicy" tasks >/dev/null
echo "installed the safepolicy training/audit stack ($flavour torch) into $venv"
