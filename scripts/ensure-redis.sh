#!/usr/bin/env bash
# Make sure `redis-server` is installed: the tests start their own on a free loopback port (no persistence, in a
# temp dir) and stop it at the end. Installs it with apt-get when missing and we are root; never starts, nor uses,
# the system's Redis service (a policy-rc.d refuses service starts during the install).
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing and cannot be installed here (needs root and apt-get):" >&2
  echo "install it yourself (apt-get install redis-server, brew install redis), then run again." >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# added by miniagent scripts/ensure-redis.sh while installing redis-server\nexit 101\n' >"$policy"
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
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
redis-server --version
