#!/usr/bin/env bash
# Sourced by the other scripts: installs the system packages weir's build needs on a
# Debian machine and picks a target dir outside the clone so that repeated runs on one
# machine reuse the build.
#
# Always: mold (the linker set in .cargo/config.toml) and a C compiler. For the default
# features also: a C++ compiler and libclang (RocksDB's C++ and its bindgen bindings),
# make, perl, pkg-config and OpenSSL's headers (librdkafka, built from source with TLS);
# a script that builds with `--no-default-features` sets WEIR_SETUP_MINIMAL=1 first and
# skips them (libclang alone is ~100 MB of packages).
set -euo pipefail
need=()
command -v mold >/dev/null 2>&1 || need+=(mold)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ "${WEIR_SETUP_MINIMAL:-0}" != 1 ]; then
  command -v c++ >/dev/null 2>&1 || need+=(g++)
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v perl >/dev/null 2>&1 || need+=(perl)
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
  dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
  dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
mkdir -p "$CARGO_TARGET_DIR"
