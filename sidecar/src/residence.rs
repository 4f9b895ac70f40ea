//! Keeping a sidecar small in memory.
//!
//! Code: strait is one binary (gateway, CLI and sidecar), and the kernel maps its code in 64 KiB
//! runs around each page touched, so a sidecar would hold most of the binary's code resident.
//! Advising the code mapping as randomly accessed, and dropping the pages mapped so far, leaves
//! resident only the code pages the sidecar runs. (Kernels that map 64 KiB around a touched
//! page whatever the advice, as Linux 6.18 does, keep more.)
//!
//! Heap: the C allocator keeps what a burst freed in its heap; a sidecar that held 10,000
//! connections kept about 280 MiB after they closed. Whenever the heap's free memory has grown
//! by [`GROWTH`] since it was last released, the free pages go back to the system.

use std::time::Duration;

/// How much the heap's free memory must grow before it is released again.
const GROWTH: u64 = 4 << 20;
/// How often the heap is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Watches the heap's free memory, and says when enough was freed to give back.
#[derive(Debug, Default)]
pub struct HeapWatch {
    /// Free bytes the heap held when it was last released, or since then at the lowest (free
    /// memory taken again no longer counts as freed).
    released_at: u64,
}

impl HeapWatch {
    /// Takes the heap's free bytes now; true when they grew by [`GROWTH`] or more since the
    /// last release (which this counts as done).
    pub fn release_now(&mut self, free: u64) -> bool {
        if free < self.released_at + GROWTH {
            self.released_at = self.released_at.min(free);
            return false;
        }
        self.released_at = free;
        true
    }
}

/// Gives the heap's free pages back to the system whenever enough was freed (glibc; elsewhere
/// it only waits). Runs until `stopped`.
pub async fn release_freed_heap(stopped: tokio_util::sync::CancellationToken) {
    let mut watch = HeapWatch::default();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(free) = heap_free() && watch.release_now(free) {
                    release_heap();
                }
            }
            () = stopped.cancelled() => return,
        }
    }
}

/// The bytes the allocator holds free in its heaps (glibc; elsewhere unknown).
fn heap_free() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Hands the heap's free pages back to the system (glibc; elsewhere a no-op).
pub fn release_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own heaps to the system;
    // it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
    fn freed_memory_is_released_once_it_grew_enough_since_the_last_release() {
        const MIB: u64 = 1 << 20;
        let mut watch = HeapWatch::default();
        // A little free memory is kept.
        assert!(!watch.release_now(MIB));
        assert!(!watch.release_now(3 * MIB));
        // A burst frees 200 MiB: released once, not again while it stays free.
        assert!(watch.release_now(200 * MIB));
        assert!(!watch.release_now(200 * MIB));
        assert!(!watch.release_now(203 * MIB));
        // Taken again, then freed again: released again.
        assert!(!watch.release_now(20 * MIB));
        assert!(!watch.release_now(23 * MIB));
        assert!(watch.release_now(25 * MIB));
    }

    #[test]
    fn the_heap_reports_what_it_holds_free() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return;
        }
        let mut blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        let before = heap_free().unwrap();
        // Every other block of 64 KiB freed, between blocks still in use: the heap cannot
        // merge them into its top and shrink, so the 2 MiB stay in it, free.
        let mut index = 0;
        blocks.retain(|_| {
            index += 1;
            index % 2 == 0
        });
        let after = heap_free().unwrap();
        assert!(
            after >= before + (1 << 20),
            "free before {before}, after {after}"
        );
        assert!(blocks.iter().all(|b| b.len() == 64 << 10));
    }

    #[test]
    fn releasing_the_heap_keeps_what_is_in_use() {
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        let freed: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
        drop(freed);
        release_heap();
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|b| *b == i as u8))
        );
    }

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
