#!/usr/bin/env bash
# Make sure redis-server and PostgreSQL binaries exist, so the tests can start throwaway instances when
# no REDIS_URL / DATABASE_URL is reachable, and nginx + wrk for the benchmark's own tests.
# Installs from Debian when running as root; quick when everything is present.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi

if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "missing: ${missing[*]} — install them (apt-get install ${missing[*]}) or set REDIS_URL / DATABASE_URL" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
