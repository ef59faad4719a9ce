#!/bin/sh
# synapse-root.sh DIR: builds the Synapse the integration tests run, once.
#
# Synapse is not packaged for Debian bookworm, but Debian's unstable suite
# (sid) has matrix-synapse. This makes DIR a minimal Debian sid root
# (debootstrap --variant=minbase) with matrix-synapse installed in it; the
# harness then starts Synapse with `chroot DIR python3 -m
# synapse.app.homeserver`, each homeserver's config and data under DIR/srv.
# About a minute or two and 550 MB; needs root, debootstrap and the Debian
# mirror apt already uses. DIR/.opsbot-synapse, written last, holds the
# installed version: a DIR that has it is left alone.
set -eu

root=${1:?usage: synapse-root.sh DIR}
marker=$root/.opsbot-synapse
[ -f "$marker" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "synapse-root.sh: building the Synapse root needs root (debootstrap, chroot)" >&2
	exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	echo "synapse-root.sh: installing debootstrap" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# The mirror apt already uses (deb822 sources first, then sources.list).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
	mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\/debian\)\/*[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
[ -f "$marker" ] && exit 0 # built by someone else while we waited

tmp=$root.tmp
rm -rf "$tmp" "$root"
echo "synapse-root.sh: debootstrap --variant=minbase sid from $mirror into $tmp" >&2
debootstrap --variant=minbase sid "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
	tail -n 30 "$tmp.log" >&2
	exit 1
}
# sid's Release file is often past its Valid-Until date on mirrors and snapshots.
chroot "$tmp" apt-get -o Acquire::Check-Valid-Until=false update -qq
DEBIAN_FRONTEND=noninteractive chroot "$tmp" apt-get install -y -qq --no-install-recommends matrix-synapse >>"$tmp.log" 2>&1 || {
	tail -n 30 "$tmp.log" >&2
	exit 1
}
chroot "$tmp" apt-get clean
mkdir -p "$tmp/srv"
version=$(chroot "$tmp" dpkg-query -W -f '${Version}' matrix-synapse)
echo "$version" >"$tmp/.opsbot-synapse"
mv "$tmp" "$root"
rm -f "$tmp.log"
echo "synapse-root.sh: Synapse $version ready in $root" >&2
