//! A global allocator for binaries that run the CPU backend: large blocks are kept for reuse
//! instead of going back to the operating system, and fresh ones ask Linux for huge pages.
//!
//! Why: every convolution, attention block and norm of a UNet or VAE step allocates its output
//! and scratch (tens of MB at 256x256 and up) and frees them a moment later. glibc serves such
//! blocks with `mmap` and returns them with `munmap` (always above 32 MB, its largest dynamic
//! threshold), so the next step faults the same memory in again, 4 KiB at a time, and the kernel
//! zeroes every page: `perf` put page clearing and fault handling at ~10 % of a 256x256 inpaint
//! on the CPU. The same reason is behind the usual advice to run PyTorch's CPU inference with
//! jemalloc or tcmalloc.
//!
//! What: blocks of at least [`MIN_CACHED`] bytes, rounded up to a multiple of [`GRANULE`],
//! are parked on free in a small table (at most [`SLOTS`] blocks and [`BUDGET`] bytes, oldest
//! evicted first) and handed out again to the next request of the same rounded size and
//! alignment (a UNet step repeats the previous step's shapes exactly). New large blocks are
//! advised `MADV_HUGEPAGE` before their first touch (Linux, with transparent huge pages in
//! `madvise` mode as Debian ships them): one fault per 2 MiB instead of 512 (a guided UNet step
//! at 256x256 took 3.0 s with them and 3.8-3.9 s without on 2026-11-29, 2.2 s either way on
//! 2026-11-30). Smaller blocks go straight to the system allocator.
//!
//! Not while a model loads ([`LongLived`], held by `StableDiffusion::load`): the load converts
//! ~3.4-4.2 GB of f16 weights into fresh f32 buffers that are touched once and kept. On a virtual
//! machine whose host takes free memory back (virtio-balloon free page reporting, which reports
//! free blocks of huge-page order), a huge page that has been free for a few seconds is new
//! memory to the host again: the SD 1.5 load took 5.0-5.5 s with huge pages against 1.2 s
//! right after another run, and 1.8 s either way with 4 KiB pages (2026-11-30, BENCHMARKS.md).
//!
//! A library never sets the process's allocator: binaries opt in with
//! `#[global_allocator] static ALLOC: nullpaint::cpu::alloc::BlockCache = BlockCache::new();`
//! (the `nullpaint` CLI does). `NULLPAINT_BLOCK_CACHE=0` in the environment makes it a
//! pass-through to the system allocator (for comparisons).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Blocks below this size are never cached: glibc's heap already reuses them.
pub const MIN_CACHED: usize = 1 << 20;
/// Cached sizes are rounded up to this multiple (a shape that changes by a row reuses a block).
pub const GRANULE: usize = 64 << 10;
/// The most blocks the table holds.
pub const SLOTS: usize = 96;
/// The most bytes the table holds.
pub const BUDGET: usize = 1536 << 20;

/// [`LongLived`] scopes alive: while above zero, fresh blocks are not advised for huge pages.
static LONG_LIVED: AtomicUsize = AtomicUsize::new(0);

/// While one is alive (in any thread), fresh large blocks keep ordinary 4 KiB pages: for
/// memory that is written once and kept, such as a model's weights (see the module docs).
#[derive(Debug)]
pub struct LongLived(());

impl LongLived {
    pub fn enter() -> Self {
        LONG_LIVED.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        LONG_LIVED.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
struct Slot {
    ptr: usize,
    size: usize,
    align: usize,
    /// When the block was parked (a counter): the smallest is evicted first.
    stamp: u64,
}

const EMPTY: Slot = Slot {
    ptr: 0,
    size: 0,
    align: 0,
    stamp: 0,
};

struct Table {
    slots: [Slot; SLOTS],
    bytes: usize,
    clock: u64,
}

/// The allocator (see the module docs). `const`-constructible for `#[global_allocator]`.
pub struct BlockCache {
    table: Mutex<Table>,
    /// 0: not read yet, 1: on, 2: off (`NULLPAINT_BLOCK_CACHE=0`).
    state: AtomicU8,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache").finish_non_exhaustive()
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    pub const fn new() -> Self {
        Self {
            table: Mutex::new(Table {
                slots: [EMPTY; SLOTS],
                bytes: 0,
                clock: 0,
            }),
            state: AtomicU8::new(0),
        }
    }

    fn on(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                // `std::env::var_os` allocates a small string: fine here, it is below the
                // cached size and the system allocator serves it.
                let on = std::env::var_os("NULLPAINT_BLOCK_CACHE").is_none_or(|v| v != "0");
                self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
                on
            }
        }
    }

    /// The layout a large request is served with: its size rounded up to [`GRANULE`].
    fn rounded(layout: Layout) -> Option<Layout> {
        if layout.size() < MIN_CACHED {
            return None;
        }
        let size = layout.size().checked_next_multiple_of(GRANULE)?;
        Layout::from_size_align(size, layout.align()).ok()
    }

    /// Takes a parked block of exactly this rounded layout.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut table = self.table.lock().ok()?;
        let i = table
            .slots
            .iter()
            .position(|s| s.ptr != 0 && s.size == layout.size() && s.align == layout.align())?;
        let slot = std::mem::replace(&mut table.slots[i], EMPTY);
        table.bytes -= slot.size;
        Some(slot.ptr as *mut u8)
    }

    /// Parks a block; returns the blocks to hand back to the system (evicted ones, or this one
    /// when it does not fit at all). At most `SLOTS + 1` blocks, on the stack.
    fn park(
        &self,
        ptr: *mut u8,
        layout: Layout,
        evicted: &mut [(usize, Layout); SLOTS + 1],
    ) -> usize {
        let mut n = 0;
        let Ok(mut table) = self.table.lock() else {
            evicted[0] = (ptr as usize, layout);
            return 1;
        };
        if layout.size() > BUDGET {
            evicted[0] = (ptr as usize, layout);
            return 1;
        }
        // Oldest out until the block fits the budget and a slot is free.
        loop {
            let free = table.slots.iter().position(|s| s.ptr == 0);
            if let Some(i) = free
                && table.bytes + layout.size() <= BUDGET
            {
                table.clock += 1;
                let stamp = table.clock;
                table.slots[i] = Slot {
                    ptr: ptr as usize,
                    size: layout.size(),
                    align: layout.align(),
                    stamp,
                };
                table.bytes += layout.size();
                return n;
            }
            let Some(oldest) = (0..SLOTS)
                .filter(|&i| table.slots[i].ptr != 0)
                .min_by_key(|&i| table.slots[i].stamp)
            else {
                // Empty table and still no room: cannot happen (size <= BUDGET), but never loop.
                evicted[n] = (ptr as usize, layout);
                return n + 1;
            };
            let slot = std::mem::replace(&mut table.slots[oldest], EMPTY);
            table.bytes -= slot.size;
            // SAFETY of the later dealloc: size and align are those the block was allocated with.
            if let Ok(l) = Layout::from_size_align(slot.size, slot.align) {
                evicted[n] = (slot.ptr, l);
                n += 1;
            }
        }
    }

    /// Hands every parked block back to the system (e.g. before a long idle period).
    pub fn release(&self) {
        let mut out = [(0usize, Layout::new::<u8>()); SLOTS + 1];
        let mut n = 0;
        if let Ok(mut table) = self.table.lock() {
            for slot in table.slots.iter_mut() {
                if slot.ptr != 0 {
                    if let Ok(l) = Layout::from_size_align(slot.size, slot.align) {
                        out[n] = (slot.ptr, l);
                        n += 1;
                    }
                    *slot = EMPTY;
                }
            }
            table.bytes = 0;
        }
        for &(ptr, layout) in &out[..n] {
            // SAFETY: each block came from `System` with exactly this layout.
            unsafe { System.dealloc(ptr as *mut u8, layout) };
        }
    }

    /// Bytes parked right now.
    pub fn parked_bytes(&self) -> usize {
        self.table.lock().map_or(0, |t| t.bytes)
    }

    /// A fresh large block from the system, advised for huge pages before its first touch
    /// (unless a [`LongLived`] scope is open).
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn fresh(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: `layout` has a non-zero size (>= MIN_CACHED).
        let ptr = unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        };
        #[cfg(target_os = "linux")]
        if !ptr.is_null() && LONG_LIVED.load(Ordering::Relaxed) == 0 {
            advise_huge(ptr, layout.size());
        }
        ptr
    }
}

/// `madvise(MADV_HUGEPAGE)` on the whole 4 KiB pages inside `[ptr, ptr + len)`. Advice only:
/// failures (no transparent huge pages, an old kernel) change nothing.
#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + len) & !(PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside a block we own; MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every block handed out comes from `System` with the (rounded) layout it is later
// returned with; parked blocks are owned by the table alone until taken again.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::rounded(layout) {
            Some(big) if self.on() => match self.take(big) {
                Some(ptr) => ptr,
                // SAFETY: as the caller's contract.
                None => unsafe { self.fresh(big, false) },
            },
            // SAFETY: as the caller's contract.
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::rounded(layout) {
            Some(big) if self.on() => match self.take(big) {
                Some(ptr) => {
                    // SAFETY: the block holds `big.size() >= layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
                    ptr
                }
                // SAFETY: as the caller's contract.
                None => unsafe { self.fresh(big, true) },
            },
            // SAFETY: as the caller's contract.
            _ => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::rounded(layout) {
            Some(big) if self.on() => {
                let mut out = [(0usize, Layout::new::<u8>()); SLOTS + 1];
                let n = self.park(ptr, big, &mut out);
                for &(p, l) in &out[..n] {
                    // SAFETY: each block came from `System` with exactly this layout.
                    unsafe { System.dealloc(p as *mut u8, l) };
                }
            }
            // SAFETY: as the caller's contract (`on()` never changes once read, so a block
            // allocated rounded is freed rounded).
            _ => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both small, or the cache off: the system's realloc (may grow in place).
        let small = layout.size() < MIN_CACHED && new_size < MIN_CACHED;
        if small || !self.on() {
            // SAFETY: as the caller's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A large block on either side: allocate, copy, free through this allocator so that
        // the rounding stays consistent.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: as the caller's contract; `new_size` is non-zero per `realloc`'s contract.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_parks_evicts_and_zeroes() {
        let cache = BlockCache::new();
        cache.state.store(1, Ordering::Relaxed); // on, whatever the environment says
        let layout = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: matched alloc/dealloc pairs with the same layouts.
        unsafe {
            let a = cache.alloc(layout);
            assert!(!a.is_null());
            a.write_bytes(7, layout.size());
            cache.dealloc(a, layout);
            assert_eq!(cache.parked_bytes(), 3 << 20);
            // The same rounded size comes back as the same block, zeroed when asked.
            let slightly_smaller = Layout::from_size_align((3 << 20) - 100, 64).unwrap();
            let b = cache.alloc_zeroed(slightly_smaller);
            assert_eq!(a, b);
            assert_eq!(cache.parked_bytes(), 0);
            let s = std::slice::from_raw_parts(b, slightly_smaller.size());
            assert!(s.iter().all(|&v| v == 0));
            // Another alignment is not reused.
            cache.dealloc(b, slightly_smaller);
            let other = Layout::from_size_align(3 << 20, 4096).unwrap();
            let c = cache.alloc(other);
            assert!(!c.is_null());
            assert_eq!(c as usize % 4096, 0);
            cache.dealloc(c, other);
            assert_eq!(cache.parked_bytes(), 6 << 20);
            // Over the budget: the oldest go back to the system.
            let big = Layout::from_size_align(BUDGET - (4 << 20), 64).unwrap();
            let d = cache.alloc(big);
            assert!(!d.is_null());
            cache.dealloc(d, big);
            assert!(cache.parked_bytes() <= BUDGET);
            assert!(cache.parked_bytes() >= big.size());
            // More blocks than slots: never more than SLOTS parked.
            let small = Layout::from_size_align(MIN_CACHED, 8).unwrap();
            let blocks: Vec<_> = (0..SLOTS + 5).map(|_| cache.alloc(small)).collect();
            for &p in &blocks {
                assert!(!p.is_null());
                cache.dealloc(p, small);
            }
            assert!(cache.parked_bytes() <= BUDGET);
            // Growing a large block keeps its contents.
            let g = cache.alloc(small);
            g.write_bytes(3, small.size());
            let g2 = cache.realloc(g, small, 5 << 20);
            assert!(!g2.is_null());
            assert!(
                std::slice::from_raw_parts(g2, small.size())
                    .iter()
                    .all(|&v| v == 3)
            );
            cache.dealloc(g2, Layout::from_size_align(5 << 20, 8).unwrap());
            // Small blocks pass through.
            let tiny = Layout::from_size_align(100, 8).unwrap();
            let t = cache.alloc(tiny);
            assert!(!t.is_null());
            cache.dealloc(t, tiny);
            cache.release();
            assert_eq!(cache.parked_bytes(), 0);
        }
    }

    /// The `VmFlags` of the mapping holding `addr` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = a <= addr && addr < b;
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn fresh_blocks_ask_for_huge_pages_unless_long_lived() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("WARNING: skipped: this kernel has no transparent huge pages");
            return;
        }
        let cache = BlockCache::new();
        cache.state.store(1, Ordering::Relaxed);
        // Sizes above glibc's mmap threshold, each its own mapping, none reused from the other.
        let step = Layout::from_size_align(48 << 20, 64).unwrap();
        let weights = Layout::from_size_align(40 << 20, 64).unwrap();
        // SAFETY: matched alloc/dealloc pairs with the same layouts.
        unsafe {
            let a = cache.alloc(step);
            let flags = vm_flags(a as usize + step.size() / 2);
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
            let b = {
                let _weights = LongLived::enter();
                cache.alloc(weights)
            };
            let flags = vm_flags(b as usize + weights.size() / 2);
            assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
            cache.dealloc(a, step);
            cache.dealloc(b, weights);
            cache.release();
        }
        assert_eq!(LONG_LIVED.load(Ordering::Relaxed), 0);
    }
}
