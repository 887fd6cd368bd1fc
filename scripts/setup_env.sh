#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment: torch, learn2learn, metarec and its extras
# (dev: tests; text: item text embeddings; bench: the peer libraries that benchmarks/peers.py times).
#
# Why a script and not a plain `pip install -e .`:
#   * torch: the default spec pins torch 2.14.1 + torchvision 0.29.1 (a matching pair; PyPI's torchvision
#     does not import beside other torch builds). Override for other CUDA builds, e.g.
#     `make test TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your wheel index>"`.
#   * learn2learn 0.2.0 (its last release) is published only as a source archive whose pre-generated C
#     files do not compile on Python >= 3.11 (upstream learnables/learn2learn#413): scripts/install_learn2learn.sh
#     builds it from that sdist with regenerated C sources (see there; scripts/check_wheel.sh uses it too).
#
# Usage: scripts/setup_env.sh [VENV_DIR]   (env: PYTHON, TORCH_SPEC, METAREC_EXTRAS)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # absolute: install_learn2learn.sh changes directory
PYTHON="${PYTHON:-python3.11}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
EXTRAS="${METAREC_EXTRAS:-dev,text,bench}"  # bench: the peer libraries of benchmarks/peers.py

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# The stamp records what the environment was built from; an unchanged stamp means nothing to do.
STAMP_INPUT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/install_learn2learn.sh"; echo "$TORCH_SPEC $EXTRAS")"
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

bash "$ROOT/scripts/install_learn2learn.sh" "$VENV"   # nothing to do when learn2learn imports already

echo "[setup] installing metarec[$EXTRAS]"
"${PIP[@]}" -e "$ROOT[$EXTRAS]"
"$VENV/bin/python" -c "import metarec, learn2learn, torch, pytorch_lightning" >/dev/null
echo "$STAMP_HASH" > "$STAMP"
echo "[setup] ready: $VENV"
