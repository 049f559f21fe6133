//! The tracing subscriber: text or JSON, filtered by RUST_LOG (default info).

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// As `init`, with another default level when RUST_LOG is unset.
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
