//! The `tl` binary: parse the command line, run the command, print its report.
mod cli;

fn main() {
    // Behave like other Unix tools when the reader of our output goes away (`tl … | head`).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tl::runtime::flush_denormals();
    std::process::exit(cli::main());
}
