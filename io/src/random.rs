//! Random numbers from the operating system, drawn here and handed to federation's types
//! (export-log epochs, token ids, balancer seeds).

use ring::rand::{SecureRandom, SystemRandom};

fn fill(buf: &mut [u8]) {
    // The system RNG failing is not recoverable in any useful way; fall back to the clock so a
    // value is still unique in practice.
    if SystemRandom::new().fill(buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // The low bytes change; the high ones of a nanosecond count are nearly all zero.
        let all = nanos.to_be_bytes();
        let n = buf.len().min(16);
        let start = buf.len() - n;
        buf[start..].copy_from_slice(&all[16 - n..]);
    }
}

/// A random non-zero 64-bit number (epochs of export logs, seeds).
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    fill(&mut buf);
    u64::from_be_bytes(buf).max(1)
}

/// A random 128-bit number (the unique id of a token).
pub fn random_u128() -> u128 {
    let mut buf = [0u8; 16];
    fill(&mut buf);
    u128::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_and_are_never_zero() {
        let draws: std::collections::HashSet<u64> = (0..64).map(|_| random_u64()).collect();
        assert_eq!(draws.len(), 64);
        assert!(!draws.contains(&0));
        assert_ne!(random_u128(), random_u128());
    }
}
