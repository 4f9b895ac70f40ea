//! Keeping a sidecar small in memory.
//!
//! Code and read-only data: the kernel maps a program's pages in 64 KiB runs around each page
//! touched (Linux 6.18 does so whatever the advice), so a process keeps resident much of what
//! it ever ran, start-up included. Once started, a sidecar drops those pages of every object it
//! loaded (its binary and the C library): only what it runs from then on is read back, from the
//! page cache. Its own binary, `strait-proxy`, holds the sidecar's code alone, so fewer runs of
//! 64 KiB cover it than in `strait`, where gateway and CLI code lie between.
//!
//! Heap: the C allocator keeps what a burst freed in its heap; a sidecar that held 10,000
//! connections kept about 280 MiB after they closed. Whenever the heap's free memory has grown
//! by [`GROWTH`] since it was last released, the free pages go back to the system. A
//! `strait-proxy` built with mimalloc (the `mimalloc` feature) leaves the C allocator's heap
//! nearly empty, and mimalloc gives freed pages back by itself.

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

/// A loadable segment of an object in this process: where it lies and whether it is writable.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    len: usize,
    writable: bool,
}

/// The whole pages of an object's read-only segments, outside the range relocated at load
/// (RELRO, written once by the loader then made read-only): pages that are the file's bytes,
/// so dropping them only makes the next touch read them back.
fn droppable(
    segments: &[Segment],
    relro: Option<(usize, usize)>,
    page: usize,
) -> Vec<(usize, usize)> {
    segments
        .iter()
        .filter(|s| !s.writable)
        .filter(|s| {
            relro.is_none_or(|(start, len)| s.start + s.len <= start || start + len <= s.start)
        })
        .filter_map(|s| {
            let start = s.start.div_ceil(page) * page;
            let end = (s.start + s.len) / page * page;
            (start < end).then(|| (start, end - start))
        })
        .collect()
}

/// Drops the resident pages of the code and read-only data of every object this process has
/// loaded (the executable and its shared libraries), so that only what runs from now on is read
/// back (Linux with glibc; a no-op elsewhere, or when the advice is refused).
pub fn trim_read_only() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: the loader calls `each_object` once per loaded object, with headers that stay
        // valid for the call; `each_object` reads them only.
        unsafe {
            libc::dl_iterate_phdr(Some(each_object), std::ptr::null_mut());
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid `dl_phdr_info` whose `dlpi_phdr` points at
    // `dlpi_phnum` program headers of a loaded object (see `trim_read_only`).
    let (info, headers) = unsafe {
        let info = &*info;
        let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
        (info, headers)
    };
    // The vDSO is the kernel's, not a file.
    // SAFETY: `dlpi_name` is a NUL-terminated string of the loader's, or null.
    let name = (!info.dlpi_name.is_null())
        .then(|| unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes());
    if name.is_some_and(|name| name.starts_with(b"linux-vdso") || name.starts_with(b"linux-gate")) {
        return 0;
    }
    let base = info.dlpi_addr as usize;
    let mut segments = Vec::new();
    let mut relro = None;
    for header in headers {
        let start = base + header.p_vaddr as usize;
        let len = header.p_memsz as usize;
        match header.p_type {
            libc::PT_LOAD => segments.push(Segment {
                start,
                len,
                writable: header.p_flags & libc::PF_W != 0,
            }),
            libc::PT_GNU_RELRO => relro = Some((start, len)),
            // Relocations into read-only segments (TEXTREL): their pages are not the file's.
            // SAFETY: the dynamic section of a loaded object, which ends with DT_NULL.
            libc::PT_DYNAMIC if unsafe { text_relocations(start as *const DynamicEntry) } => {
                return 0;
            }
            _ => {}
        }
    }
    // SAFETY: sysconf only reads a constant of the system.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    for (start, len) in droppable(&segments, relro, page) {
        // SAFETY: whole pages of a read-only, file-backed segment of a loaded object, none of
        // them relocated (TEXTREL and RELRO are left alone): their contents are the file's.
        // Both advices only change which pages stay resident (the next touch reads them back
        // from the file), never what they hold.
        unsafe {
            let address = start as *mut libc::c_void;
            libc::madvise(address, len, libc::MADV_RANDOM);
            libc::madvise(address, len, libc::MADV_DONTNEED);
        }
    }
    0
}

/// An entry of an object's dynamic section (`ElfW(Dyn)`: a tag, then a word).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[repr(C)]
struct DynamicEntry {
    tag: isize,
    value: usize,
}

/// Whether an object's dynamic section asks for relocations in its read-only segments.
///
/// # Safety
/// `dynamic` points at a loaded object's dynamic section, which ends with `DT_NULL`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn text_relocations(mut dynamic: *const DynamicEntry) -> bool {
    const DT_TEXTREL: isize = 22;
    const DT_FLAGS: isize = 30;
    const DF_TEXTREL: usize = 0x4;
    loop {
        // SAFETY: within the section, up to and including its DT_NULL (see above).
        let entry = unsafe { &*dynamic };
        match entry.tag {
            0 => return false,
            DT_TEXTREL => return true,
            DT_FLAGS if entry.value & DF_TEXTREL != 0 => return true,
            _ => {}
        }
        // SAFETY: the entry was not DT_NULL, so another follows.
        dynamic = unsafe { dynamic.add(1) };
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
    fn only_whole_pages_of_read_only_segments_outside_relro_are_dropped() {
        let segment = |start, len, writable| Segment {
            start,
            len,
            writable,
        };
        let segments = [
            // Headers and read-only data, ending within a page.
            segment(0, 0x2_0800, false),
            // Code, starting and ending within pages.
            segment(0x2_0900, 0x5_0000, false),
            // Less than a page.
            segment(0x8_0010, 0x100, false),
            // Writable data.
            segment(0x9_0000, 0x3000, true),
            // Read-only, but relocated at load.
            segment(0xa_0000, 0x2000, false),
        ];
        assert_eq!(
            droppable(&segments, Some((0xa_1000, 0x800)), 0x1000),
            vec![(0, 0x2_0000), (0x2_1000, 0x4_f000)]
        );
        assert_eq!(droppable(&segments, None, 0x1000).len(), 3);
    }

    #[test]
    fn trimmed_code_and_data_are_read_back_as_they_run() {
        // Dropping relocated data instead of code would crash here (it did, before the advice
        // was limited to read-only segments outside RELRO).
        trim_read_only();
        // Code dropped from memory runs again: the pages come back from the file.
        let sum: u64 = (1..=1000u64).map(|n| n * n).sum();
        assert_eq!(sum, 333_833_500);
        let text = format!("{:?}", std::collections::BTreeMap::from([(1, "one")]));
        assert_eq!(text, r#"{1: "one"}"#);
        // Read-only data of a shared library, and the library's code, read back too.
        let mut out = [0u8; 16];
        let text = std::ffi::CString::new("%s-%d").unwrap();
        let word = std::ffi::CString::new("one").unwrap();
        // SAFETY: a 16-byte buffer, its size, and a format that fits in it with its arguments.
        let written = unsafe {
            libc::snprintf(
                out.as_mut_ptr().cast(),
                out.len(),
                text.as_ptr(),
                word.as_ptr(),
                2,
            )
        };
        assert_eq!((written, &out[..5]), (5, &b"one-2"[..]));
    }
}
