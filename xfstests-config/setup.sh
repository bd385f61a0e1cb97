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
# - optionally (--xfs) creates four sparse image files under $BASE/xfs-img,
#   attaches them to loop devices and makes xfs on them (like a real test box):
#     test.img, scratch.img       -> mounted on $BASE/xfs/{test,scratch}, with
#                                    lower/upper/work inside (local-xfs.config)
#     kovl-test.img, kovl-scratch.img -> left unmounted; xfstests mounts them
#                                    itself as the base of kernel overlayfs
#                                    (overlay-xfs.config)
#   Re-running it is safe: existing images/loop devices/mounts are reused;
#   with --reset the four images are re-made (mkfs.xfs) from scratch.
#   Image size: OVLFUSE_XFS_IMG_SIZE (default 8G; sparse, grows with use).
# Usage: setup.sh [--reset] [--tmpfs] [--xfs] [--cleanup]
#   --cleanup: unmount everything under $BASE (incl. the tmpfs and the xfs
#              loop filesystems), detach the loop devices of $BASE/xfs-img
#              and delete those images, and exit
# It does NOT fetch or build xfstests; see README.md for that.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${OVLFUSE_BIN:-$REPO/target/release/ovlfuse}
BASE=${OVLFUSE_XFS_BASE:-/var/tmp/ovlfuse-xfstests}
IMG_DIR=$BASE/xfs-img
IMG_SIZE=${OVLFUSE_XFS_IMG_SIZE:-8G}
RESET=0 TMPFS=0 XFS=0 CLEANUP=0
for a in "$@"; do
	case "$a" in
	--reset) RESET=1 ;;
	--tmpfs) TMPFS=1 ;;
	--xfs) XFS=1 ;;
	--cleanup) CLEANUP=1 ;;
	*) echo "usage: $0 [--reset] [--tmpfs] [--xfs] [--cleanup]" >&2; exit 2 ;;
	esac
done

# loop device currently backed by image $1 (empty if none)
loopdev_of()
{
	losetup -n -O NAME -j "$1" 2>/dev/null | head -n 1
}

# detach the loop devices of all images in $IMG_DIR
detach_loops()
{
	for img in "$IMG_DIR"/*.img; do
		[ -e "$img" ] || continue
		losetup -n -O NAME -j "$img" | while read -r dev; do
			losetup -d "$dev"
		done
	done
}

unmount_all()
{
	# deepest first; only mounts under $BASE
	findmnt -rn -o TARGET | grep -F "$BASE/" | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null ||
		{ sleep 1; umount "$m" 2>/dev/null; } || umount -l "$m"
	done
	if mountpoint -q "$BASE/tmpfs" 2>/dev/null; then umount "$BASE/tmpfs"; fi
}

if [ "$CLEANUP" = 1 ]; then
	unmount_all
	echo "unmounted everything under $BASE"
	if [ -d "$IMG_DIR" ]; then
		detach_loops
		rm -f "$IMG_DIR"/*.img
		rmdir "$IMG_DIR" 2>/dev/null || true
		echo "detached and deleted the xfs images in $IMG_DIR"
	fi
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

# The mount program the configs name (FUSE_SUBTYP=.ovlfuse-xfstests): ovlfuse itself,
# except that a mount whose options name no lowerdir= gets the layers of its source name.
# Some tests clear MOUNT_OPTIONS (generic/607 and others), and for FSTYP=fuse that is
# where the layers are; xfstests unmounts by source name, so the source cannot simply
# be the layer directory.
cat >/usr/local/bin/ovlfuse-xfstests <<WRAPPER
#!/bin/sh
# Written by $REPO/xfstests-config/setup.sh; see xfstests-config/README.md.
case " \$* " in *lowerdir=*) exec ovlfuse "\$@" ;; esac
case "\$1" in
ovlfuse_test|ovlfuse_scratch) set=$BASE/\${1#ovlfuse_} ;;
ovlfuse_tmpfs_test|ovlfuse_tmpfs_scratch) set=$BASE/tmpfs/\${1#ovlfuse_tmpfs_} ;;
ovlfuse_xfs_test|ovlfuse_xfs_scratch) set=$BASE/xfs/\${1#ovlfuse_xfs_} ;;
*) exec ovlfuse "\$@" ;;
esac
exec ovlfuse "\$@" -o "lowerdir=\$set/lower,upperdir=\$set/upper,workdir=\$set/work"
WRAPPER
chmod 0755 /usr/local/bin/ovlfuse-xfstests
echo "wrote /usr/local/bin/ovlfuse-xfstests"

if [ "$XFS" = 1 ]; then
	command -v mkfs.xfs >/dev/null 2>&1 || {
		echo "setup.sh: mkfs.xfs missing (apt-get install xfsprogs)" >&2
		exit 1
	}
fi

if [ "$RESET" = 1 ]; then
	unmount_all
	if [ "$XFS" = 1 ] && [ -d "$IMG_DIR" ]; then
		detach_loops
		rm -f "$IMG_DIR"/*.img
	fi
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
if [ "$XFS" = 1 ]; then
	mkdir -p "$IMG_DIR"
	for name in test scratch kovl-test kovl-scratch; do
		img=$IMG_DIR/$name.img
		if [ ! -e "$img" ]; then
			truncate -s "$IMG_SIZE" "$img"
			NEW_IMG=1
		else
			NEW_IMG=0
		fi
		dev=$(loopdev_of "$img")
		[ -n "$dev" ] || dev=$(losetup -f --show "$img")
		if [ "$NEW_IMG" = 1 ]; then
			mkfs.xfs -q -f "$dev"
		fi
		echo "  xfs     : $img on $dev"
	done
	# ovlfuse layers: mount the xfs fs, then make the layer dirs inside it
	for fs in test scratch; do
		mnt=$BASE/xfs/$fs
		mkdir -p "$mnt" "$BASE/xfs/$fs-mnt"
		mountpoint -q "$mnt" || mount -t xfs "$(loopdev_of "$IMG_DIR/$fs.img")" "$mnt"
		mkdir -p "$mnt/lower" "$mnt/upper" "$mnt/work"
	done
	# kernel overlayfs: only the mount points of the base fs
	mkdir -p "$BASE/xfs/kovl/test" "$BASE/xfs/kovl/scratch"
	echo "  ovlfuse on xfs: $BASE/xfs/{test,scratch}/{lower,upper,work}, mounts $BASE/xfs/{test,scratch}-mnt (local-xfs.config)"
	echo "  overlay on xfs: loop devs of $IMG_DIR/kovl-{test,scratch}.img, base mounted by xfstests on $BASE/xfs/kovl/{test,scratch} (overlay-xfs.config)"
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
