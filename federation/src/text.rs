//! Equality of short strings without a call into the C library.
//!
//! Policy decisions compare many short names (namespaces, service accounts, methods, path
//! prefixes), most of them under 16 bytes. `==` on strings calls `memcmp` whenever the lengths
//! agree; for a few bytes the call costs more than the comparison, and it was a quarter of a
//! decision's time at 100 rules. Here strings up to 16 bytes are compared as two overlapping
//! machine words, inline; longer ones still go to `memcmp`.

/// Whether `a` and `b` hold the same bytes.
#[inline]
pub fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Whether `text` begins with `prefix`.
#[inline]
pub fn starts_with(text: &str, prefix: &str) -> bool {
    let (text, prefix) = (text.as_bytes(), prefix.as_bytes());
    text.get(..prefix.len())
        .is_some_and(|head| same_bytes(head, prefix))
}

/// Whether `a` and `b` hold the same bytes: up to 16 bytes as the first and the last word of
/// the length (overlapping when the length is not a whole number of words).
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

/// `N` bytes of `bytes` from `at`, as an array the compiler compares as one word (zeros past
/// the end, which callers never reach: both sides are of one length).
#[inline]
fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|w| <[u8; N]>::try_from(w).ok())
        .unwrap_or([0; N])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to 40, and a difference at every position, agree with `==`.
    #[test]
    fn agrees_with_the_standard_comparison() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "length {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] = b'0';
                assert!(!same_bytes(&a, &b), "length {n}, difference at {at}");
            }
            let mut longer = a.clone();
            longer.push(b'z');
            assert!(!same_bytes(&a, &longer), "lengths {n} and {}", n + 1);
        }
    }

    #[test]
    fn prefixes() {
        assert!(starts_with("/orders/42", "/orders/"));
        assert!(starts_with("/orders/42", ""));
        assert!(!starts_with("/order", "/orders/"));
        assert!(!starts_with("/other-7/x", "/orders/"));
        assert!(starts_with(
            "/a/very/long/path/beyond/sixteen",
            "/a/very/long/path/"
        ));
    }
}
