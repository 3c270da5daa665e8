#!/usr/bin/env bash
# Installs promtool (Debian package "prometheus") and amtool (Debian package
# "prometheus-alertmanager"), which tests/ops needs to check and unit-test the
# alert rules, the scrape config and the Alertmanager config.
#
# Quick when both tools are already on PATH: it checks first and only then
# runs apt-get update + install, as root (or through sudo when not root).
# The packages' services are not started: only the command-line tools are used.
set -euo pipefail

missing_packages=()
command -v promtool >/dev/null 2>&1 || missing_packages+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing_packages+=(prometheus-alertmanager)

if [ "${#missing_packages[@]}" -eq 0 ]; then
    echo "promtool and amtool already installed"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "need root (or sudo) to install: ${missing_packages[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps Debian's postinst from starting the Prometheus and
# Alertmanager daemons: CI and developer machines only need the CLI tools.
policy_rc=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy_rc" >/dev/null
    "${as_root[@]}" chmod 755 "$policy_rc"
    created_policy=1
fi
remove_policy() {
    if [ "$created_policy" -eq 1 ]; then "${as_root[@]}" rm -f "$policy_rc"; fi
}
trap remove_policy EXIT

# Wait for another apt/dpkg run (unattended upgrades, a parallel install) rather than failing.
apt_wait=(-o DPkg::Lock::Timeout=600)
"${as_root[@]}" apt-get "${apt_wait[@]}" update -qq
"${as_root[@]}" apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing_packages[@]}"

command -v promtool >/dev/null && command -v amtool >/dev/null
echo "installed: ${missing_packages[*]}"
