//! The daemon's heap: one malloc arena, and freed memory handed back to the system once a
//! wave of frees (the kernel forgetting inodes, big listings dropped) has ended.
//!
//! glibc keeps freed memory in its free lists, and so in RSS, unless asked with
//! `malloc_trim`. Trimming at once on each big free would take the arena lock (1-3 ms) many
//! times during one wave and still miss what the rest of the wave frees; so callers only
//! count what they free, and a short-lived thread trims when the counting has paused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Freed bytes from which a trim is worth its time (a few ms of the arena lock).
const TRIM_WORTH: usize = 2 << 20;
/// How long frees must pause before the trim: a forget wave comes in batches a few ms
/// apart, and a trim in its middle would hand back only part of it.
const QUIET: Duration = Duration::from_millis(200);

/// Bytes freed since the last trim (estimates from the callers).
static OWED: AtomicUsize = AtomicUsize::new(0);
/// Whether a trimming thread is waiting for the pause.
static WAITING: AtomicBool = AtomicBool::new(false);

/// Puts every thread's allocations in one malloc arena, unless MALLOC_ARENA_MAX says
/// otherwise. With an arena per serving thread, nodes made by one thread and forgotten by
/// another leave holes in several heaps, and the daemon settled 2-2.5x above its size after
/// the first forget (stat of 100k files, forget, repeated: 20-29 MiB after forgets instead
/// of 11-12). Threads allocate little per request, mostly from their own tcache.
pub fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Notes that about `bytes` of heap were freed; once enough is owed, a thread trims the
/// heap after frees pause. Costs one atomic add in the common case.
pub fn freed(bytes: usize) {
    let owed = OWED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if owed < TRIM_WORTH || WAITING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(trim_after_pause);
    if spawned.is_err() {
        // No thread to spare: trim now rather than keep the memory.
        trim();
        WAITING.store(false, Ordering::Release);
    }
}

fn trim_after_pause() {
    loop {
        wait_for_pause();
        trim();
        WAITING.store(false, Ordering::Release);
        // Frees counted during the trim found a trimmer still waiting and were left to it:
        // if they add up to enough, this thread waits for their pause too.
        if OWED.load(Ordering::Relaxed) < TRIM_WORTH || WAITING.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

/// Returns once no free has been counted for `QUIET`.
fn wait_for_pause() {
    loop {
        let seen = OWED.load(Ordering::Relaxed);
        std::thread::sleep(QUIET);
        if OWED.load(Ordering::Relaxed) == seen {
            return;
        }
    }
}

/// Returns freed heap memory to the system now.
fn trim() {
    let owed = OWED.swap(0, Ordering::Relaxed);
    unsafe {
        libc::malloc_trim(0);
    }
    if log::log_enabled!(log::Level::Debug) {
        // What the heap holds after the trim tells a leak (in use grows) from fragmentation
        // (free grows) when RSS creeps over hours.
        let m = unsafe { libc::mallinfo2() };
        log::debug!(
            "returned freed heap to the system (about {} KiB freed since the last trim); \
             heap now {} KiB in use, {} KiB free, {} KiB in its own mappings",
            owed >> 10,
            m.uordblks >> 10,
            m.fordblks >> 10,
            m.hblkhd >> 10
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_of_frees_is_trimmed_once_after_it_pauses() {
        // Other tests of this process may free meanwhile, but not 8 MiB.
        for _ in 0..4 {
            freed(TRIM_WORTH);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            WAITING.load(Ordering::Acquire),
            "a trimmer waits for the pause"
        );
        assert!(
            OWED.load(Ordering::Relaxed) >= 4 * TRIM_WORTH,
            "nothing trimmed yet"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while WAITING.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !WAITING.load(Ordering::Acquire),
            "the trimmer ran and ended"
        );
        assert!(
            OWED.load(Ordering::Relaxed) < 4 * TRIM_WORTH,
            "what was owed is cleared"
        );
    }
}
