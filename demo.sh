#!/usr/bin/env bash
# The main job, end to end: set up the machine, bring up the pvp test bed
# (client -- dut -- server), deploy examples/pvp-forward.yaml on the dut, send
# real traffic through it (ping, HTTP), show the per-function counters, and
# tear everything down again.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
vnf() { .venv/bin/vnfchain "$@"; }
step() { printf '\n\033[1m$ vnfchain %s\033[0m\n' "$*"; vnf "$@"; }

cleanup() {
  vnf undeploy pvp-edge >/dev/null 2>&1 || true
  vnf testbed down pvp >/dev/null 2>&1 || true
}
trap cleanup EXIT

step testbed up topologies/pvp.yaml
step deploy examples/pvp-forward.yaml
step testbed exec pvp client -- ping -c 5 -i 0.2 198.18.2.2
step testbed exec pvp client -- curl -s -m 5 http://198.18.2.2/
step testbed exec pvp client -- sh -c 'head -c 1000000 /dev/urandom | nc -N 198.18.2.2 7 | wc -c'   # 1 MB echoed back
step stats pvp-edge
step status pvp-edge
