#!/bin/sh
# Prepare this machine for running xfstests against ovlfuse.
# - creates the layer directories and mount points used by local.config
#   and overlay.config (under $OVLFUSE_XFS_BASE, default /var/tmp/ovlfuse-xfstests)
# - links /usr/local/bin/ovlfuse to the release binary so that
#   mount -t fuse.ovlfuse (mount.fuse3) can find it
# - optionally (--reset) unmounts and empties the layers
# - optionally (--tmpfs) also mounts a tmpfs on $BASE/tmpfs with its own
#   layer directories, used by local-tmpfs.config (ovlfuse layers on tmpfs,
#   the same base fs as overlay.config gives kernel overlayfs)
# Usage: setup.sh [--reset] [--tmpfs] [--cleanup]
#   --cleanup: unmount everything under $BASE (incl. the tmpfs) and exit
# It does NOT fetch or build xfstests; see README.md for that.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${OVLFUSE_BIN:-$REPO/target/release/ovlfuse}
BASE=${OVLFUSE_XFS_BASE:-/var/tmp/ovlfuse-xfstests}
RESET=0 TMPFS=0 CLEANUP=0
for a in "$@"; do
	case "$a" in
	--reset) RESET=1 ;;
	--tmpfs) TMPFS=1 ;;
	--cleanup) CLEANUP=1 ;;
	*) echo "usage: $0 [--reset] [--tmpfs] [--cleanup]" >&2; exit 2 ;;
	esac
done

unmount_all()
{
	# deepest first; only mounts under $BASE
	findmnt -rn -o TARGET | grep -F "$BASE/" | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
	done
	if mountpoint -q "$BASE/tmpfs" 2>/dev/null; then umount "$BASE/tmpfs"; fi
}

if [ "$CLEANUP" = 1 ]; then
	unmount_all
	echo "unmounted everything under $BASE"
	exit 0
fi

if [ ! -x "$BIN" ]; then
	echo "setup.sh: $BIN not found; run 'cargo build --release' in $REPO first" >&2
	exit 1
fi
for t in fusermount3 mount.fuse3 findmnt; do
	command -v "$t" >/dev/null 2>&1 || {
		echo "setup.sh: $t missing (apt-get install fuse3 util-linux)" >&2
		exit 1
	}
done
[ -c /dev/fuse ] || { echo "setup.sh: /dev/fuse missing" >&2; exit 1; }

ln -sfn "$BIN" /usr/local/bin/ovlfuse
echo "linked /usr/local/bin/ovlfuse -> $BIN"

if [ "$RESET" = 1 ]; then
	unmount_all
	# only remove what we created, never anything outside $BASE
	case "$BASE" in /*/*) ;; *) echo "refusing to reset BASE=$BASE" >&2; exit 1;; esac
	rm -rf "$BASE/test" "$BASE/scratch" "$BASE/kovl" \
	       "$BASE/test-mnt" "$BASE/scratch-mnt"
	echo "reset $BASE"
fi

for fs in test scratch; do
	mkdir -p "$BASE/$fs/lower" "$BASE/$fs/upper" "$BASE/$fs/work" \
		 "$BASE/$fs-mnt" "$BASE/kovl/$fs"
done
if [ "$TMPFS" = 1 ]; then
	mkdir -p "$BASE/tmpfs"
	mountpoint -q "$BASE/tmpfs" || mount -t tmpfs -o size=4G ovlfuse_xfs_tmpfs "$BASE/tmpfs"
	for fs in test scratch; do
		mkdir -p "$BASE/tmpfs/$fs/lower" "$BASE/tmpfs/$fs/upper" \
			 "$BASE/tmpfs/$fs/work" "$BASE/tmpfs/$fs-mnt"
	done
	echo "  tmpfs   : $BASE/tmpfs/{test,scratch}/{lower,upper,work} (local-tmpfs.config)"
fi
echo "layer directories ready under $BASE:"
echo "  ovlfuse : $BASE/{test,scratch}/{lower,upper,work}, mounts $BASE/{test,scratch}-mnt"
echo "  overlay : $BASE/kovl/{test,scratch} (xfstests creates ovl-* inside)"

# xfstests wants these users/groups (README step 6); create if missing.
if [ "$(id -u)" = 0 ]; then
	getent group fsgqa >/dev/null || groupadd fsgqa
	id fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa
	id fsgqa2 >/dev/null 2>&1 || useradd fsgqa2
	id 123456-fsgqa >/dev/null 2>&1 || useradd 123456-fsgqa 2>/dev/null || true
fi
