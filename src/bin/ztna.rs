//! The `ztna` binary: server and command line. Thin by design; see `ztna_keystore::cli`.

fn main() -> std::process::ExitCode {
    ztna_keystore::cli::main()
}
