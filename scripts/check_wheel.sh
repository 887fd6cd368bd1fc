#!/usr/bin/env bash
# CI check that metarec works as an installed package, not only from the source tree:
#   1. builds the wheel from the repository's files (tracked + untracked-but-not-ignored, as a commit would
#      hold them), with pip's isolated build;
#   2. checks that the wheel holds the built-in configs;
#   3. creates a fresh virtual environment outside the repository, installs torch (TORCH_SPEC, as
#      setup_env.sh does), learn2learn from its sdist (scripts/install_learn2learn.sh), then the wheel with
#      its dependencies;
#   4. from a folder outside the repository runs `metarec fit experiment=quickstart trainer.max_epochs=1`,
#      `metarec fit --print-config` with an added --config-path folder, and `python -m metarec --help`.
# Everything lives in one temporary folder, removed at the end (KEEP_WHEEL_CHECK=1 keeps it).
#
# Usage: scripts/check_wheel.sh   (env: PYTHON, TORCH_SPEC, KEEP_WHEEL_CHECK)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
START=$SECONDS

TMP="$(mktemp -d "${TMPDIR:-/tmp}/metarec-wheel-check.XXXXXX")"
cleanup() {
  local rc=$?
  if [ "${KEEP_WHEEL_CHECK:-}" = 1 ]; then echo "[wheel] kept $TMP"; else rm -rf "$TMP"; fi
  if [ $rc -ne 0 ]; then echo "[wheel] FAILED (exit $rc) after $((SECONDS - START)) s" >&2; fi
}
trap cleanup EXIT
fail() { echo "[wheel] FAILED: $*" >&2; exit 1; }

# The check must see the installed package only: no source tree, no config or data settings.
unset PYTHONPATH METAREC_CONFIG_DIR METAREC_CONFIG_PATH PYTHONHOME
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" WANDB_MODE=disabled
PIP_FLAGS=(--disable-pip-version-check -q)
# The machine's pip config may list local index folders that lack a package; pip's warnings are noise.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

echo "[wheel] copying the source files to $TMP/src"
mkdir -p "$TMP/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) | while IFS= read -r -d '' f; do
  [ -e "$ROOT/$f" ] && printf '%s\0' "$f"   # skip files deleted but not yet committed
done | (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$TMP/src"

echo "[wheel] creating a fresh virtual environment in $TMP/venv"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
quiet_pip "$VPY" -m pip install "${PIP_FLAGS[@]}" --upgrade pip setuptools wheel

echo "[wheel] building the wheel"
quiet_pip "$VPY" -m pip wheel "${PIP_FLAGS[@]}" --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL="$(ls "$TMP"/dist/metarec-*.whl)"
echo "[wheel] built $(basename "$WHEEL")"
"$VPY" - "$WHEEL" "$TMP/src" <<'EOF' || fail "the wheel lacks the built-in configs"
import pathlib, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
src = pathlib.Path(sys.argv[2])
want = sorted(p.relative_to(src).as_posix() for p in (src / "metarec" / "configs").rglob("*") if p.is_file())
want += ["metarec/__main__.py"] if len(want) > 1 else ["metarec/configs/defaults.yaml"]
missing = [n for n in want if n not in names]
sys.exit(f"missing from the wheel: {', '.join(missing)}" if missing else 0)
EOF

echo "[wheel] installing torch: $TORCH_SPEC"
# shellcheck disable=SC2086
quiet_pip "$VPY" -m pip install "${PIP_FLAGS[@]}" $TORCH_SPEC
quiet_pip bash "$ROOT/scripts/install_learn2learn.sh" "$TMP/venv"
echo "[wheel] installing the wheel with its dependencies"
quiet_pip "$VPY" -m pip install "${PIP_FLAGS[@]}" "$WHEEL"
# learn2learn's unused requirements are left out on purpose (install_learn2learn.sh); nothing else may be missing
CONFLICTS="$("$VPY" -m pip check 2>&1 | grep -v -E '^learn2learn 0\.2\.0 requires (gsutil|qpth),|^No broken requirements' || true)"
[ -z "$CONFLICTS" ] || fail "pip check: $CONFLICTS"

mkdir -p "$TMP/outside" "$TMP/extra/learner"
cd "$TMP/outside"
WHERE="$("$VPY" -c 'import metarec; print(metarec.__file__)')"
case "$WHERE" in "$TMP/venv/"*) ;; *) fail "metarec imported from $WHERE, not from the installed wheel" ;; esac

echo "[wheel] python -m metarec --help"
"$VPY" -m metarec --help >/dev/null || fail "python -m metarec --help"
"$VPY" -m metarec fit --help > "$TMP/fit-help.txt" || fail "python -m metarec fit --help"
grep -q quickstart "$TMP/fit-help.txt" || fail "metarec fit --help lists no built-in experiment"

echo "[wheel] metarec fit --config-path (an added learner option)"
printf 'name: maml\ninner_steps: 2\n' > "$TMP/extra/learner/wheelcheck.yaml"
"$TMP/venv/bin/metarec" fit --print-config --config-path "$TMP/extra" learner=wheelcheck > "$TMP/printed.yaml" \
  || fail "metarec fit --config-path"
grep -q "inner_steps: 2" "$TMP/printed.yaml" || fail "the added learner option was not used"

echo "[wheel] metarec fit experiment=quickstart trainer.max_epochs=1"
"$TMP/venv/bin/metarec" fit experiment=quickstart trainer.max_epochs=1 run.root="$TMP/runs" > "$TMP/fit.log" 2>&1 \
  || { tail -n 30 "$TMP/fit.log" >&2; fail "metarec fit experiment=quickstart"; }
ls "$TMP"/runs/*/*/metrics.json >/dev/null 2>&1 || { tail -n 30 "$TMP/fit.log" >&2; fail "the run wrote no metrics.json"; }
grep -q "run finished" "$TMP/fit.log" || fail "metarec fit did not report a finished run"

echo "[wheel] OK in $((SECONDS - START)) s"
