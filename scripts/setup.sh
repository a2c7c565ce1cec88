#!/usr/bin/env bash
# Sourced by the other scripts: installs the system packages weir's build needs on a
# Debian machine (mold, the linker set in .cargo/config.toml; libclang for the RocksDB
# bindings' bindgen; a C++ compiler for RocksDB itself) and picks a target dir
# outside the clone so that repeated runs on one machine reuse the build.
set -euo pipefail
need=()
command -v mold >/dev/null 2>&1 || need+=(mold)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
mkdir -p "$CARGO_TARGET_DIR"
