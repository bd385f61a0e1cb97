//! A small deterministic PRNG (splitmix64): the same seed gives the same case.

#[derive(Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x6A09_E667_F3BC_C908);
        r.next();
        r
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(crate) fn range(&mut self, lo: u64, hi_incl: u64) -> u64 {
        lo + self.below(hi_incl - lo + 1)
    }
    /// True with probability `pct` percent.
    pub(crate) fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    /// Pick an index according to integer weights.
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
    /// Printable data so that mismatching contents are readable in reports.
    pub(crate) fn data(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        let tag = b"abcdefghijklmnopqrstuvwxyz0123456789"[self.below(36) as usize];
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(if i % 16 == 0 {
                tag
            } else {
                b'a' + (self.below(26) as u8)
            });
        }
        v
    }
}
