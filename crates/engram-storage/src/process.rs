//! Process- and thread-level settings that the write path's latency depends on.
//!
//! Both were found with `engram-bench storage` on a 2-core VM (ext4 on virtio), where the P99
//! acknowledgement latency of 64 concurrent writers was 6–10 ms while the disk's own P99
//! `fdatasync` was about 0.6 ms. Timing every commit showed the rest: the committer thread
//! stalled 4–6 ms inside `apply` on a single page fault (a 2 MiB transparent huge page being
//! cleared: the allocator asks for huge pages on its arenas), and was preempted for a
//! scheduler slice while the tokio workers ran the woken writers.

use std::sync::atomic::{AtomicBool, Ordering};

/// Turns transparent huge pages off for this process and its children
/// (`prctl(PR_SET_THP_DISABLE)`), so that heap growth faults in 4 KiB pages rather than
/// clearing 2 MiB at a time inside whichever thread touches the memory first. For binaries
/// (the server, the bench), called once at start; a library never changes it behind its
/// host's back. A no-op off Linux.
///
/// Measured (`ENGRAM_BENCH_PARTS=writes engram-bench storage --quick`, interleaved runs, 64
/// async writers): P99 6.8 / 7.2 ms with huge pages, 2.6 / 2.8 ms without, throughput the
/// same within the run-to-run noise.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether transparent huge pages are off for this process (`THP_enabled: 0` in
/// `/proc/self/status`); `None` where that cannot be read.
pub fn transparent_huge_pages_disabled() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "0")
}

static PRIORITY_WARNED: AtomicBool = AtomicBool::new(false);

/// Sets the calling thread's nice value (lower runs sooner; -20..=19). Raising the priority
/// (a negative value) needs `CAP_SYS_NICE` or an `RLIMIT_NICE` allowance; without either the
/// thread keeps its priority and this says so once in the log. A no-op for 0 and off Linux.
pub(crate) fn set_current_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id.
        let r = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if r != 0 && !PRIORITY_WARNED.swap(true, Ordering::Relaxed) {
            let e = std::io::Error::last_os_error();
            tracing::info!(
                nice,
                error = %e,
                "WAL committer keeps its normal priority (raising it needs CAP_SYS_NICE); \
                 acknowledgement latency may have a longer tail under CPU load"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (&PRIORITY_WARNED, Ordering::Relaxed);
}

/// Puts the calling thread in the `SCHED_IDLE` scheduling class (Linux): it runs only when
/// no other thread wants the CPU, and the scheduler treats a CPU running only such threads as
/// idle when it places a waking thread, so a request never waits behind it. (A nice value of
/// 19 is not that: measured under 64 HTTP writers on 2 cores, a nice-19 indexer still took
/// 29% of the CPU time while the request threads spent half of theirs runnable but waiting.)
/// Returns false where it is not available; the caller then falls back to a nice value.
pub(crate) fn set_current_thread_idle_class() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0) with a valid parameter.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Lowers the calling thread to background priority: the `SCHED_IDLE` class where there is
/// one, else nice 19.
pub fn lower_current_thread_priority() {
    if !set_current_thread_idle_class() {
        set_current_thread_nice(19);
    }
}

/// Runs the body of one of the store's own threads (the committer, the waker, the compactor,
/// the indexer); if it panics (a failed assertion: an invariant of the commit path or the
/// data does not hold), the process stops at once. A dead committer would leave every writer
/// waiting forever; stopping is what makes the failure visible, and recovery from the WAL on
/// restart is the designed way back (crash-only, as TigerBeetle treats its assertions). The
/// panic's message and place are printed by the panic hook before this aborts.
pub(crate) fn abort_on_panic<R>(thread: &str, body: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(
                thread,
                "a storage thread panicked: stopping the process (a restart recovers from the WAL)"
            );
            eprintln!("engram: the storage thread {thread} panicked; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_can_be_turned_off_and_read_back() {
        // A child process, so the test runner's own setting is left alone.
        let exe = std::env::current_exe().unwrap();
        if std::env::var_os("ENGRAM_THP_CHILD").is_some() {
            disable_transparent_huge_pages().unwrap();
            assert_eq!(transparent_huge_pages_disabled(), Some(true));
            return;
        }
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "process::tests::huge_pages_can_be_turned_off_and_read_back",
                "--nocapture",
            ])
            .env("ENGRAM_THP_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_can_move_to_the_idle_class() {
        std::thread::spawn(|| {
            assert!(set_current_thread_idle_class());
            // SAFETY: a plain syscall on the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn thread_priority_is_best_effort() {
        // Lowering our own priority is always allowed; raising may not be: neither panics.
        std::thread::spawn(|| {
            set_current_thread_nice(5);
            set_current_thread_nice(-5);
        })
        .join()
        .unwrap();
    }
}
