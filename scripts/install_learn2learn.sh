#!/usr/bin/env bash
# Installs learn2learn 0.2.0 into a virtual environment, built from its source archive.
#
# learn2learn 0.2.0 (its last release) is published only as a source archive whose pre-generated C files
# do not compile on Python >= 3.11 (upstream learnables/learn2learn#413). We download that sdist,
# regenerate the C sources from its .pyx files with a current Cython, and install it with --no-deps so
# that its unused `gsutil` requirement is not pulled in. `import learn2learn` itself needs numpy, scipy,
# torchvision, gym, requests and tqdm: torch/torchvision must already be installed (they come with their
# own TORCH_SPEC, see setup_env.sh); the rest is installed here. (qpth is imported lazily, only by
# MetaOptNet, and its 0.0.18 sdist has an invalid requirement string that current pip rejects.)
#
# Usage: scripts/install_learn2learn.sh VENV_DIR     (does nothing if learn2learn already imports there)
# Used by scripts/setup_env.sh and scripts/check_wheel.sh.
set -euo pipefail

VENV="${1:?usage: install_learn2learn.sh VENV_DIR}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # absolute: the build below changes directory
L2L_VERSION="0.2.0"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

if "$VENV/bin/python" -c "import learn2learn" 2>/dev/null; then
  exit 0
fi
echo "[learn2learn] building learn2learn $L2L_VERSION from its source archive (see scripts/install_learn2learn.sh)"
"${PIP[@]}" "cython>=3" numpy scipy gym requests tqdm
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# --no-build-isolation: pip prepares the sdist's metadata with the Cython just installed, instead of
# building a Cython from source in an isolated environment (--no-binary then only concerns learn2learn).
"$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation \
  --no-binary learn2learn "learn2learn==$L2L_VERSION" -d "$WORK"
tar -xzf "$WORK/learn2learn-$L2L_VERSION.tar.gz" -C "$WORK"
SRC="$WORK/learn2learn-$L2L_VERSION"
rm -rf "$SRC/.eggs"   # a bundled Cython 0.29 for Python 3.7, not ours
(cd "$SRC" && "$VENV/bin/cython" -3 learn2learn/data/*.pyx)
"${PIP[@]}" --no-deps --no-build-isolation "$SRC"
"$VENV/bin/python" -W ignore -c "import learn2learn" >/dev/null 2>&1 || "$VENV/bin/python" -c "import learn2learn"
