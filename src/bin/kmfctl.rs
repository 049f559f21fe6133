fn main() -> std::process::ExitCode {
    kmf::cli::kmfctl::main()
}
