fn main() -> std::process::ExitCode {
    builder_api::cli::main()
}
