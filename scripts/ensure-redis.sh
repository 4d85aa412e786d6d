#!/usr/bin/env bash
# Make sure `redis-server` is installed: the tests start their own on a free loopback port (no persistence, in a
# temp dir) and stop it at the end. Installs it with apt-get when missing and we are root; never starts, nor uses,
# the system's Redis service.
set -euo pipefail
bash "$(dirname "$0")/_apt-install.sh" redis-server redis-server "apt-get install redis-server, brew install redis"
redis-server --version
