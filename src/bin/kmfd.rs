fn main() -> std::process::ExitCode {
    kmf::cli::kmfd::main()
}
