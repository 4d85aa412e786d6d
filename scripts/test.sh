#!/usr/bin/env bash
# The whole test command: setup, lint, types, tests. Prints how long each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."

phases=()
run_phase() {
  local name=$1
  shift
  local start=$SECONDS
  echo "==> ${name}"
  "$@"
  phases+=("$(printf '%-10s %4ds' "$name" $((SECONDS - start)))")
}

trap 'echo; echo "phase durations:"; printf "  %s\n" "${phases[@]}"' EXIT

run_phase setup make --no-print-directory install
run_phase lint make --no-print-directory lint
run_phase typecheck make --no-print-directory typecheck
run_phase tests make --no-print-directory pytest
