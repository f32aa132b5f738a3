//! The `tl` binary: parse the command line, run the command, print its report.
mod cli;

fn main() {
    // Behave like other Unix tools when the reader of our output goes away (`tl … | head`).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A file-size limit (ulimit -f) then fails the write with EFBIG, which every write
        // path reports and cleans up after, instead of killing the process mid-write.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    tl::runtime::flush_denormals();
    std::process::exit(cli::main());
}
