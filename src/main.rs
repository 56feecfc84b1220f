//! The `lunafs` binary: blocks termination signals (so only the signal thread sees them),
//! parses the command line and reports errors as one line on stderr.

use clap::Parser;

fn main() {
    if let Err(e) = lunafs::telemetry::block_termination_signals() {
        eprintln!("lunafs: {e}");
        std::process::exit(1);
    }
    let cli = lunafs::cli::Cli::parse();
    match lunafs::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("lunafs: {e}");
            let code = match e {
                lunafs::Error::Usage(_) => 2,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}
