//! Stand-alone launcher (the same code as `wrenn __launch`), used by the runtime's tests.
//!
//! Run with: `echo '{"id":..,"bundle":..,"root":..}' | wrenn-launcher`

fn main() -> std::process::ExitCode {
    wrenn_runtime::container::launcher::launcher_main(std::env::args_os().skip(1).collect())
}
