//! Inode numbers shown through the mount.
//!
//! `st_ino` of a merged object comes from its origin (the lower copy it was copied up from,
//! or the upper file if it was born in the upper), so it does not change across copy-up or
//! remount. When the layers sit on several filesystems, two layers can hold the same inode
//! number; like the kernel's `xino`, the index of the layer's filesystem is folded into the
//! high bits so that numbers stay unique in the mount.

use super::HashMap;

pub struct InoMap {
    /// Filesystem index (0-based, in order of first appearance) of each st_dev.
    fs_of_dev: HashMap<u64, u64>,
    /// High bits used for the filesystem index; 0 when every layer is on one filesystem.
    bits: u32,
    /// Width of the numbers shown: 64, or 32 with `ino32_t`.
    width: u32,
}

impl InoMap {
    pub fn new(devs: impl IntoIterator<Item = u64>, ino32: bool) -> InoMap {
        let mut fs_of_dev = HashMap::default();
        for d in devs {
            let n = fs_of_dev.len() as u64;
            fs_of_dev.entry(d).or_insert(n);
        }
        let n = fs_of_dev.len() as u64;
        let bits = if n <= 1 {
            0
        } else {
            64 - (n - 1).leading_zeros()
        };
        InoMap {
            fs_of_dev,
            bits,
            width: if ino32 { 32 } else { 64 },
        }
    }

    /// The number shown for inode `ino` of the filesystem `dev`.
    pub fn map(&self, dev: u64, ino: u64) -> u64 {
        // Checked before the map: this runs for every entry of every listing.
        if self.bits == 0 && (self.width == 64 || ino >> 32 == 0) {
            return ino;
        }
        let fs = self.fs_of_dev.get(&dev).copied().unwrap_or(0);
        let shift = self.width - self.bits;
        if ino >> shift != 0 {
            // Too large to fold: hash instead, which keeps it stable if not guaranteed
            // unique (the node table gives a clashing object a number of its own).
            let h = ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ fs;
            return (h >> (64 - self.width)) | (1 << (self.width - 1));
        }
        ino | (fs << shift)
    }

    /// Whether `dev` is one of the layers' filesystems.
    pub fn knows(&self, dev: u64) -> bool {
        self.fs_of_dev.contains_key(&dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filesystem_keeps_numbers() {
        let m = InoMap::new([7, 7, 7], false);
        assert_eq!(m.map(7, 12345), 12345);
    }

    #[test]
    fn several_filesystems_get_distinct_high_bits() {
        let m = InoMap::new([1, 2, 3], false);
        let a = m.map(1, 42);
        let b = m.map(2, 42);
        let c = m.map(3, 42);
        assert!(a != b && b != c && a != c);
        assert_eq!(a & 0xffff, 42);
        assert_eq!(m.map(2, 42), b, "stable");
    }

    #[test]
    fn ino32_numbers_fit_in_32_bits() {
        let m = InoMap::new([1], true);
        assert_eq!(m.map(1, 42), 42);
        let big = m.map(1, 1 << 40);
        assert!(big < 1 << 32 && big != 0);
        assert_eq!(m.map(1, 1 << 40), big, "stable");
        let m = InoMap::new([1, 2], true);
        assert!(m.map(2, 42) < 1 << 32);
        assert_ne!(m.map(1, 42), m.map(2, 42));
    }
}
