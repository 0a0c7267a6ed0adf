#!/usr/bin/env bash
# Install the Debian packages listed in scripts/debian-packages.txt that are
# not installed yet. Idempotent and silent when there is nothing to do.
# Usage: scripts/install-packages.sh   (as root)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="${here}/debian-packages.txt"

# Strip comments and blank lines; one package name per line remains.
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$list")

missing=()
for pkg in "${wanted[@]}"; do
    # "install ok installed" is the only status that means the package is usable;
    # "rc" (config-files only) or "un" count as missing.
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ((EUID != 0)); then
    echo "install-packages: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
fi

echo "install-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Fresh machines/containers often have empty package lists: refresh once,
# and only when something has to be installed.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
