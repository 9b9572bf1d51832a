//! Logging through tracing: human lines on a terminal, JSON for log shippers, and the
//! journal's native fields when systemd runs us (JOURNAL_STREAM is set).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let journald = (config.format == LogFormat::Human
        && std::env::var_os("JOURNAL_STREAM").is_some())
    .then(|| tracing_journald::layer().ok())
    .flatten();
    let human = (journald.is_none() && config.format == LogFormat::Human).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
    });
    let json = (config.format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(human)
        .with(json)
        .try_init();
}
