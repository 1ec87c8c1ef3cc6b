//! How a transaction asks for the memory of a large lab.
//!
//! Reading a lab of ten thousand machines fills some ten megabytes of fresh
//! memory at once: the text, then the machines read from it and the nodes
//! of its root, each reserved once. The kernel hands fresh memory out 4 KiB
//! at a time, on the first touch of each page, and on a virtual machine
//! each such fault costs a microsecond or more: thousands of them were as
//! much of a run's time as reading the file. So the text's buffer is mapped
//! in at once, and it and the room after it are asked for in pages of
//! 2 MiB where the kernel offers them ([`populate`]); and what a
//! transaction frees is kept for the next ([`keep_freed_memory`]).

/// How much the heap grows beyond what is asked when it must grow, so
/// that what is read from the text is allocated right after it, in the
/// stretch of memory [`populate`] asks huge pages for. Address space only:
/// nothing of it is mapped in until it is touched.
const HEAP_ROOM: usize = 32 << 20;

/// Asks the allocator to keep the memory a transaction frees for the next
/// one, where it would hand large blocks back to the kernel at once, and
/// to grow the heap with room to spare (`HEAP_ROOM`). A run reads
/// the lab twice (claim, release): on a lab of megabytes the second
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
                libc::mallopt(libc::M_TOP_PAD, HEAP_ROOM as libc::c_int);
            }
        });
    }
}

/// Maps in the pages of `buffer`'s spare capacity at once, where the
/// kernel would fault them in one by one as they are first written; a
/// buffer smaller than 64 KiB is left as it is.
///
/// A buffer of 2 MiB or more is asked for in huge pages: every aligned
/// 2 MiB of it, and of the next `room` bytes after it when it lies in the
/// heap (where what is read from it is allocated next, within
/// `HEAP_ROOM`), up to the huge page that holds the room's end. A huge
/// page is one fault and one page to clear instead of 512: mapping five
/// megabytes took some 2 ms in 4 KiB pages on a virtual machine, 0.15 ms
/// in huge ones, and a run on ten thousand machines some 3 ms less CPU.
/// The room is what the reading reserves, as a rule (see
/// [`super::doc::XmlLab::room_for`]), so a huge page holds little that is
/// not used: a run's peak memory grew by some 2 MiB, not more. A kernel
/// without huge pages to give (or with them turned off) maps small ones,
/// as it would have; one set to gather them on demand (`defrag`) may
/// first spend a moment compacting memory when it has none free.
pub fn populate<T>(buffer: &mut Vec<T>, room: usize) {
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
        if len >= HUGE {
            // SAFETY: sbrk(0) only tells where the heap ends.
            let heap_end = unsafe { libc::sbrk(0) } as usize;
            let with_room = (start + len).saturating_add(room);
            let advised_end = if start < heap_end && start + len <= heap_end {
                with_room.min(heap_end)
            } else {
                start + len
            };
            let (huge_first, huge_end) = (
                start.next_multiple_of(HUGE),
                advised_end
                    .next_multiple_of(HUGE)
                    .min(heap_end / HUGE * HUGE),
            );
            if huge_end > huge_first {
                // SAFETY: whole pages of this process's heap, within this
                // vector's allocation and the free room after it; the
                // advice only lets the kernel back them with huge pages,
                // and changes nothing they hold. A refusal changes nothing.
                unsafe {
                    libc::madvise(
                        huge_first as *mut libc::c_void,
                        huge_end - huge_first,
                        libc::MADV_HUGEPAGE,
                    );
                }
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
