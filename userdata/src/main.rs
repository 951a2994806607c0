fn main() -> std::process::ExitCode {
    runner_userdata::cli::main()
}
