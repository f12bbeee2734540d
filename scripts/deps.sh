#!/usr/bin/env bash
# Installs the Debian packages ssv's tests and demo use, where missing (as root).
set -euo pipefail
pkgs=(lvm2 sanlock libsanlock-dev qemu-utils tgt libiscsi-bin iptables)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ssv: missing packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 0
fi
echo "ssv: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
