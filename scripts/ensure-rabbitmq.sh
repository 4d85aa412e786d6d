#!/usr/bin/env bash
# Make sure `rabbitmq-server` is installed: the tests start their own node (own epmd, free loopback ports, data in a
# temp dir) and stop it by PID at the end. Installs it with apt-get when missing and we are root; never starts, nor
# uses, the system's RabbitMQ service.
set -euo pipefail
bash "$(dirname "$0")/_apt-install.sh" rabbitmq-server rabbitmq-server \
  "apt-get install rabbitmq-server, brew install rabbitmq"
dpkg-query -W -f='rabbitmq-server ${Version}\n' rabbitmq-server 2>/dev/null || true
