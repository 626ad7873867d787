//! The `fineprune` command line: argument parsing, progress display and output formatting over
//! the library. No logic of its own.

mod cli;

/// Training frees and reallocates the same large activation buffers every step; the system
/// allocator returns them to the kernel and faults them back in as fresh zeroed pages (a
/// quarter of LeNet's training time went to page faults and TLB shootdowns). mimalloc, told
/// never to purge freed memory, reuses them: peak memory is unchanged, the faults are gone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc.h's `mi_option_purge_delay` (the -sys crate names its neighbours 14 and 16, not
    // it); -1: never purge.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // mimalloc's own MIMALLOC_PURGE_DELAY, if set, wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option before any worker thread exists.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::Exit>() {
            Some(cli::Exit(code)) => std::process::ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
