#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to for real (Prometheus + promtool).
# Idempotent and quiet when everything is already there.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
# The Debian package starts a system Prometheus on :9090; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus 2>/dev/null || true; fi
$SUDO pkill -x prometheus 2>/dev/null || true
