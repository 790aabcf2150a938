#!/usr/bin/env bash
# Build the C++ range coder with AddressSanitizer + UndefinedBehaviorSanitizer into a temporary folder
# (the normal build in bitstream/ is left alone) and run its tests against that build:
# tests/test_rangecoder.py and tests/test_coder_threads.py. Exits non-zero if a test fails or a
# sanitizer reports anything. Needs gcc/g++ and a Python with numpy, scipy, pybind11 and pytest.
#
#   tools/sanitize.sh                      # PYTHON defaults to .venv/bin/python, else python3
#   PYTHON=/path/to/python tools/sanitize.sh [extra pytest args]
#   SANITIZE_LOG=/path/to/log tools/sanitize.sh   # default: build/sanitize.log (git-ignored)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
LOG="${SANITIZE_LOG:-$ROOT/build/sanitize.log}"
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sanitize-coder.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

LIBASAN="$(gcc -print-file-name=libasan.so)"
[[ -f "$LIBASAN" ]] || { echo "sanitize.sh: gcc has no libasan.so ($LIBASAN)"; exit 2; }
# Preloaded too: python does not link libstdc++, and ASan's __cxa_throw interceptor needs it at start-up.
LIBSTDCXX="$(g++ -print-file-name=libstdc++.so.6)"
SUFFIX="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
INCLUDES="$("$PYTHON" -m pybind11 --includes)"

echo "== sanitize.sh $(date -u +%FT%TZ) in $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "== python $PYTHON, $(g++ --version | head -1), preload $LIBASAN $LIBSTDCXX"

# A private copy of the bitstream package with the sanitized extension beside it.
mkdir -p "$WORK/bitstream"
cp "$ROOT"/bitstream/*.py "$WORK/bitstream/"
# shellcheck disable=SC2086
g++ -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -shared -fPIC -std=c++17 -Wall -Wextra $INCLUDES -I"$ROOT/cpp" \
    "$ROOT/cpp/bindings.cpp" -o "$WORK/bitstream/_rangecoder$SUFFIX"

# A pytest plugin that refuses to run unless the sanitized build is the one imported.
cat >"$WORK/sanitized_build.py" <<EOF
def pytest_sessionstart(session):
    import bitstream._rangecoder as m
    assert m.__file__.startswith("$WORK/"), "not the sanitized build: " + m.__file__
    print("sanitized build:", m.__file__)
EOF

export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=99"  # Python leaks by design
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98"
export PYTHONDONTWRITEBYTECODE=1

# From $WORK, so its bitstream comes first on sys.path; --import-mode=append keeps the repository
# root behind it (the tests import tests.test_rangecoder); no conftest (it would import torch);
# --capture=sys leaves fd 2 alone, so a sanitizer report reaches the log even when it kills pytest.
status=0
(cd "$WORK" && "$PYTHON" -m pytest -q --capture=sys -p no:cacheprovider -p sanitized_build --import-mode=append --noconftest \
    --rootdir="$ROOT" "$ROOT/tests/test_rangecoder.py" "$ROOT/tests/test_coder_threads.py" "$@") || status=$?
unset LD_PRELOAD

if grep -qE "==[0-9]+==ERROR: |SUMMARY: (Address|UndefinedBehavior|Leak)Sanitizer|: runtime error: " "$LOG"; then
  echo "== sanitize.sh: FAILED, a sanitizer reported (log: $LOG)"
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "== sanitize.sh: FAILED, pytest exit status $status (log: $LOG)"
  exit "$status"
fi
echo "== sanitize.sh: OK, no sanitizer report (log: $LOG)"
