//! A small YAML document must not cost much memory to refuse: a "billion laughs" file (nested
//! anchors and aliases, about 1 KB) is refused by the parser's budget before its expansion
//! takes memory. Measured with a counting allocator, so this file holds only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the same layout is handed to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Nine levels of nine aliases each: 9^9 (387 million) strings once expanded.
fn laughs() -> String {
    let mut text =
        String::from("apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\n");
    text.push_str(
        "l0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for level in 1..9 {
        let previous = format!("*l{}", level - 1);
        let items = vec![previous; 9].join(",");
        text.push_str(&format!("l{level}: &l{level} [{items}]\n"));
    }
    text
}

#[test]
fn a_billion_laughs_is_refused_without_taking_memory() {
    let text = laughs();
    assert!(text.len() < 1024, "{} bytes", text.len());
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = strait_federation::resource::parse_documents("laughs.yaml", &text);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let error = result
        .expect_err("a billion laughs was accepted")
        .to_string();
    assert!(error.starts_with("laughs.yaml: not valid YAML"), "{error}");
    println!(
        "refusing a {} byte billion laughs took {} KiB at most",
        text.len(),
        peak >> 10
    );
    assert!(
        peak < 4 << 20,
        "refusing a {} byte document took {} MiB",
        text.len(),
        peak >> 20
    );
}
