//! A seeded pseudo-random sequence for tests and simulations: the same numbers on every
//! platform and build, so that a failing seed replays.

/// A linear congruential sequence (Knuth's MMIX constants), read from its high bits.
#[derive(Debug, Clone)]
pub struct Seeded(u64);

impl Seeded {
    /// The sequence of a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number, in `0..below` (`below` > 0).
    pub fn below(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}
