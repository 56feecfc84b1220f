//! The `lunafs` binary: parses the command line, runs it, and reports errors as one line on
//! stderr.

use clap::Parser;

fn main() {
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
