#!/usr/bin/env bash
# Install a Debian package the tests drive, if its binary is missing: `_apt-install.sh <binary> <package> <hint>`.
# Needs root and apt-get; a policy-rc.d refuses service starts during the install, so the system's service is never
# started (the tests start their own instance on a free loopback port and stop it afterwards).
set -euo pipefail

binary=$1 package=$2 hint=$3
if command -v "$binary" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "$binary is missing and cannot be installed here (needs root and apt-get):" >&2
  echo "install it yourself ($hint), then run again." >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# added by miniagent scripts/_apt-install.sh while installing %s\nexit 101\n' "$package" >"$policy"
  chmod +x "$policy"
  created=1
fi
cleanup() {
  if [ "$created" = 1 ]; then
    rm -f "$policy"
  fi
}
trap cleanup EXIT

apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package"
