#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to for real (Prometheus + promtool), and
# iproute2 for the test-bed's process nodes.
# Idempotent and quiet when everything is already there. It stops, disables and kills
# nothing: the tests start their own Prometheus on a free 127.0.0.1 port, and the package's
# own service is kept from starting during the install (policy-rc.d), the way Debian's
# container images do it, so a Prometheus the user runs is never touched.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The test-bed's process nodes (trainscale-testbed up --process-nodes) use ip netns/veth/bridge.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
  # "101: action forbidden": invoke-rc.d starts no service while this file exists.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 0755 "$policy"
  ours=1
fi
status=0
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" || status=$?
if [ -n "$ours" ]; then $SUDO rm -f "$policy"; fi
exit "$status"
