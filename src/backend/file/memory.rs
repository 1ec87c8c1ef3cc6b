//! How a transaction asks for the memory of a large lab.
//!
//! Reading a lab of ten thousand machines fills megabytes of fresh memory
//! at once: the text, the machines read from it, the nodes of its tree.
//! The kernel hands fresh memory out a page of 4 KiB at a time, on the
//! first touch of each, and on a virtual machine each such fault costs a
//! microsecond or more: thousands of them were a good part of a run's
//! time, as much as reading the file. So the large buffers are mapped in
//! at once ([`populate`]), in pages of 2 MiB where the kernel offers them,
//! and what a transaction frees is kept for the next ([`keep_freed_memory`]).

/// Asks the allocator to keep the memory a transaction frees for the next
/// one, where it would hand large blocks back to the kernel at once. A run
/// reads the lab twice (claim, release): on a lab of megabytes the second
/// reading would otherwise fault every page of its buffers in afresh, a
/// good part of its time. The memory kept is what the first one used.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            const KEEP: libc::c_int = 256 << 20;
            // SAFETY: plain settings of the C allocator, made before the
            // blocks they concern are allocated; a refusal changes nothing.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
                libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
                libc::mallopt(libc::M_TOP_PAD, ROOM as libc::c_int);
            }
        });
    }
}

/// How much the heap grows beyond what is asked when it must grow: room
/// for the blocks that follow the text (machines, nodes) in the same
/// stretch of memory (see [`populate`]). Address space only: nothing is
/// mapped in until it is touched.
const ROOM: usize = 32 << 20;

/// Maps in the pages of `buffer`'s spare capacity at once, where the
/// kernel would fault them in one by one as they are first written; a
/// buffer smaller than 64 KiB is left as it is. Where the spare capacity
/// spans whole pages of 2 MiB (aligned ones), they are asked for as huge
/// pages: one fault, and one page to clear, instead of 512 (mapping in
/// five megabytes took some 2 ms in 4 KiB pages on a virtual machine,
/// 0.2 ms in huge ones). A kernel without huge pages to give (or with
/// them turned off) maps small ones, as it would have.
pub fn populate<T>(buffer: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        const HUGE: usize = 2 << 20;
        let spare = buffer.spare_capacity_mut();
        let (start, len) = (spare.as_mut_ptr() as usize, std::mem::size_of_val(spare));
        let first = start.next_multiple_of(PAGE);
        let end = (start + len) / PAGE * PAGE;
        if end < first + 16 * PAGE {
            return;
        }
        // The heap's room after the buffer, where the blocks read from it
        // will be allocated, is asked for in huge pages too.
        // SAFETY: sbrk(0) only tells where the heap ends.
        let heap_end = unsafe { libc::sbrk(0) } as usize;
        let advised_end = match heap_end.checked_sub(start + len) {
            Some(room) if start < heap_end && room <= 2 * ROOM => heap_end,
            _ => start + len,
        };
        let (huge_first, huge_end) = (start.next_multiple_of(HUGE), advised_end / HUGE * HUGE);
        if len >= HUGE && huge_end > huge_first {
            // SAFETY: whole pages within this vector's own allocation; the
            // advice only lets the kernel back them with huge pages, and
            // changes nothing they hold. A refusal changes nothing.
            unsafe {
                libc::madvise(
                    huge_first as *mut libc::c_void,
                    huge_end - huge_first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
        // SAFETY: whole pages within this vector's own allocation;
        // populating writes nothing a mapped page holds (a page not yet
        // mapped reads as zeroes, as it would have). A refusal (an older
        // kernel) changes nothing.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                end - first,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}
