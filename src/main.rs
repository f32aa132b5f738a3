use clap::Parser;
use tl::cli::{Cli, Command};
use tl::commands::{self, Context};

fn main() {
    // Behave like other Unix tools when the reader of our output goes away (`tl … | head`).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("tl: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context::from_args(&cli.global)?;
    match &cli.command {
        Command::Doctor => commands::doctor(&ctx)?,
        Command::Train(args) => commands::train(&ctx, args)?,
        Command::Eval(args) => commands::eval(&ctx, args)?,
        Command::Predict(args) => commands::predict(&ctx, args)?,
        Command::Dream(args) => tl::dream::run(&ctx, args)?,
        Command::Attack(args) => tl::attack::run(&ctx, args)?,
        Command::Bench(args) => commands::bench(&ctx, args)?,
    }
    Ok(())
}
