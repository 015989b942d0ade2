#!/usr/bin/env bash
# Build .venv from the pinned lock file. tensor2tensor 1.15.7 pins tensorflow-probability 0.7.0,
# which does not work with TF 2.15, so it is installed with --no-deps after its real dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
py=${PYTHON:-}
if [[ -z $py ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py=$candidate; break
    fi
  done
fi
if [[ -z $py ]]; then
  echo "error: allen-sr needs Python 3.11 (TensorFlow 2.15.1 has no wheels for newer Pythons)." >&2
  echo "       Install python3.11 or run: make venv PYTHON=/path/to/python3.11" >&2
  exit 1
fi
echo "==> creating $venv with $($py --version)"
rm -rf "$venv"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
echo "==> installing pinned dependencies (requirements/lock.txt, about 1-2 minutes)"
"${pip[@]}" install --progress-bar on -r requirements/lock.txt
echo "==> installing tensor2tensor 1.15.7 without its stale pins"
"${pip[@]}" install --no-deps tensor2tensor==1.15.7
echo "==> installing allen-sr (editable)"
"${pip[@]}" install --no-deps --no-build-isolation -e .
"${pip[@]}" check || true
touch "$venv/.installed"
echo "==> $venv ready"
