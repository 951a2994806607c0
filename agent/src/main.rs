fn main() -> std::process::ExitCode {
    runner_agent::main()
}
