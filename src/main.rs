//! The `wshost` binary: everything is in the library; see `wshost::cli`.

// Counts allocations per thread, so a callback's memory budget can be enforced.
#[global_allocator]
static ALLOC: wshost::CountingAllocator = wshost::CountingAllocator;

fn main() -> std::process::ExitCode {
    wshost::cli::main(std::env::args_os())
}
