//! The `keel` binary: parses the command line and runs it (see `keel::cli`).

fn main() -> std::process::ExitCode {
    keel::cli::main()
}
