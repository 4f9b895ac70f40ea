//! Keeping a sidecar small in memory. strait is one binary (gateway, CLI and sidecar), and the
//! kernel maps its code in 64 KiB runs around each page touched, so a sidecar would hold most of
//! the binary's code resident. Advising the code mapping as randomly accessed, and dropping the
//! pages mapped so far, leaves resident only the code pages the sidecar runs.

/// Trims the resident code of this process to the pages it touches from now on (Linux; a no-op
/// elsewhere, or when the advice is refused).
pub fn trim_code() {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let exe = exe.to_string_lossy().into_owned();
        for line in maps.lines() {
            // `start-end perms offset dev inode path`: only the executable's code. Its read-only
            // data may hold relocated pointers (RELRO) that must never be read back from the file.
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            if !line.ends_with(exe.as_str()) || perms != "r-xp" {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: the range is a whole, read-only, executable, file-backed mapping of this
            // process's own position-independent code, as the kernel listed it; code has no
            // relocations, so its pages are the file's bytes. Both advices only change which
            // pages stay resident (they are read back from the file on the next touch), never
            // their contents.
            unsafe {
                let address = start as *mut libc::c_void;
                libc::madvise(address, end - start, libc::MADV_RANDOM);
                libc::madvise(address, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_code_is_read_back_as_it_runs() {
        // Dropping relocated data instead of code would crash here (it did, before the advice
        // was limited to the executable mapping).
        trim_code();
        // Code dropped from memory runs again: the pages come back from the file.
        let sum: u64 = (1..=1000u64).map(|n| n * n).sum();
        assert_eq!(sum, 333_833_500);
        let text = format!("{:?}", std::collections::BTreeMap::from([(1, "one")]));
        assert_eq!(text, r#"{1: "one"}"#);
    }
}
