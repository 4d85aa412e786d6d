#!/usr/bin/env bash
# Make sure Node.js (>= 20) and npm are installed: a test drives the server with the official `openai` npm package
# (tests/server/node, installed there with `npm ci` from its lock file). Installs Debian's nodejs and npm with
# apt-get when missing and we are root; says what to do otherwise.
set -euo pipefail

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "Node.js $(node --version) is installed; the server's Node test needs >= 20 (e.g. from nodesource.com)." >&2
    exit 1
  fi
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "node/npm are missing and cannot be installed here (needs root and apt-get):" >&2
  echo "install Node.js >= 20 with npm, then run again." >&2
  exit 1
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
node --version
