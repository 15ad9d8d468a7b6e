//! The `retrain` command line. Each command lives in its own file under src/cli/, parses its
//! flags into the library's options and calls the library; this file only dispatches and
//! turns errors into exit codes.

mod cli;

use clap::Parser;
use retrain::interrupt::{self, Interrupted};

fn main() {
    interrupt::install();
    if let Err(e) = cli::run(cli::Cli::parse()) {
        if let Some(stop) = e.downcast_ref::<Interrupted>() {
            eprintln!("{stop}");
            eprintln!("resume with: {}", interrupt::resume_command(std::env::args().collect(), stop.checkpoint.as_deref()));
            std::process::exit(stop.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
