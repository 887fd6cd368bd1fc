#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment: torch, learn2learn, metarec and its extras.
#
# Why a script and not a plain `pip install -e .`:
#   * torch: the default spec pins torch 2.14.1 + torchvision 0.29.1 (a matching pair; PyPI's torchvision
#     does not import beside other torch builds). Override for other CUDA builds, e.g.
#     `make test TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your wheel index>"`.
#   * learn2learn 0.2.0 (its last release) is published only as a source archive whose pre-generated C
#     files do not compile on Python >= 3.11 (upstream learnables/learn2learn#413). We download that sdist,
#     regenerate the C sources from its .pyx files with a current Cython, and install it with --no-deps so
#     that its unused `gsutil` requirement is not pulled in. `import learn2learn` itself needs numpy, scipy,
#     torchvision, gym, requests and tqdm, which we install explicitly. (qpth is imported lazily, only by
#     MetaOptNet, and its 0.0.18 sdist has an invalid requirement string that current pip rejects.)
#
# Usage: scripts/setup_env.sh [VENV_DIR]   (env: PYTHON, TORCH_SPEC, METAREC_EXTRAS)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # absolute: the build below changes directory
PYTHON="${PYTHON:-python3.11}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
EXTRAS="${METAREC_EXTRAS:-dev,text}"
L2L_VERSION="0.2.0"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# The stamp records what the environment was built from; an unchanged stamp means nothing to do.
STAMP_INPUT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh"; echo "$TORCH_SPEC $EXTRAS")"
STAMP_HASH="$(printf '%s' "$STAMP_INPUT" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.metarec-setup-stamp"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_HASH" ] && "$VENV/bin/python" -c "import metarec, learn2learn" 2>/dev/null; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# The machine's pip config may list local wheel folders that do not exist; their warnings are noise.
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
"${PIP[@]}" --upgrade pip setuptools wheel

echo "[setup] installing torch: $TORCH_SPEC"
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_SPEC

if ! "$VENV/bin/python" -c "import learn2learn" 2>/dev/null; then
  echo "[setup] building learn2learn $L2L_VERSION from its source archive (see comment at top)"
  "${PIP[@]}" "cython>=3" numpy scipy gym requests tqdm
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    "learn2learn==$L2L_VERSION" -d "$WORK"
  tar -xzf "$WORK/learn2learn-$L2L_VERSION.tar.gz" -C "$WORK"
  SRC="$WORK/learn2learn-$L2L_VERSION"
  rm -rf "$SRC/.eggs"   # a bundled Cython 0.29 for Python 3.7, not ours
  (cd "$SRC" && "$VENV/bin/cython" -3 learn2learn/data/*.pyx)
  "${PIP[@]}" --no-deps --no-build-isolation "$SRC"
fi

echo "[setup] installing metarec[$EXTRAS]"
"${PIP[@]}" -e "$ROOT[$EXTRAS]"
"$VENV/bin/python" -c "import metarec, learn2learn, torch, pytorch_lightning" >/dev/null
echo "$STAMP_HASH" > "$STAMP"
echo "[setup] ready: $VENV"
