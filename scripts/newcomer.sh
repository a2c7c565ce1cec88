#!/usr/bin/env bash
# The newcomer's first hour, timed: a fresh clone of this repository (its HEAD), a
# cold target dir and, unless --warm-registry, a cold cargo registry (CARGO_HOME in a
# temporary folder, so every crate is downloaded again), then
#   1. the README's first command (scripts/run-example.sh), until it shows the output;
#   2. `cargo install --path . --locked` (the release build with every feature), the
#      installed binary's size and `weir --version`;
#   3. with --with-tests, the README's test command (scripts/test.sh) from the same
#      cold start.
# Prints the wall-clock time of each step and a summary; the clone and its build are
# deleted at the end unless --keep. Run it on an otherwise idle machine.
#   scripts/newcomer.sh [--warm-registry] [--with-tests] [--keep]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
warm_registry=0 with_tests=0 keep=0
for arg in "$@"; do
  case "$arg" in
    --warm-registry) warm_registry=1 ;;
    --with-tests) with_tests=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--warm-registry] [--with-tests] [--keep]" >&2; exit 2 ;;
  esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/weir-newcomer.XXXXXX")"
cleanup() { [ "$keep" = 1 ] && echo "kept $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT

git clone -q "$repo" "$work/weir"
export CARGO_TARGET_DIR="$work/target"
if [ "$warm_registry" = 0 ]; then
  # Cargo still runs from the rustup toolchain; only its downloads and caches move.
  export CARGO_HOME="$work/cargo-home"
fi
log="$work/log"
mkdir -p "$log"
results=()

step() { # step NAME COMMAND...: runs COMMAND in the clone, timed, its output in $log
  local name="$1" start end
  shift
  echo "newcomer: $name ..." >&2
  start=$(date +%s%N)
  if ! (cd "$work/weir" && "$@") >"$log/$name.out" 2>&1; then
    echo "newcomer: $name FAILED; its output:" >&2
    tail -n 40 "$log/$name.out" >&2
    exit 1
  fi
  end=$(date +%s%N)
  results+=("$(printf '%-14s %6d s  (%s)' "$name" $(((end - start) / 1000000000)) "$*")")
}

step first-result scripts/run-example.sh
grep -q '"service"' "$log/first-result.out" || {
  echo "newcomer: the first command showed no alert" >&2
  exit 1
}
step install cargo install --path . --locked --root "$work/install"
bin="$work/install/bin/weir"
size_mb=$(( $(stat -c %s "$bin") / 1048576 ))
version="$("$bin" --version)"
if [ "$with_tests" = 1 ]; then
  step test-suite scripts/test.sh
fi

echo
echo "newcomer's path on $(nproc) cores, $(date -u +%Y-%m-%d), commit $(git -C "$work/weir" rev-parse --short HEAD)"
echo "registry: $([ "$warm_registry" = 1 ] && echo warm || echo cold), target dir: cold"
printf '%s\n' "${results[@]}"
echo "installed binary: ${size_mb} MB; --version: $version"
echo "first command's output (tail):"
tail -n 8 "$log/first-result.out" | sed 's/^/  /'
