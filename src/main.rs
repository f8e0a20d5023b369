//! The `wshost` binary: everything is in the library; see `wshost::cli`.

fn main() -> std::process::ExitCode {
    wshost::cli::main(std::env::args_os())
}
