//! Logging through `tracing`: a human format for people at a terminal, JSON lines for log pipelines.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global logger was already installed")]
    AlreadyInstalled,
}

impl LoggingError {
    pub fn category(&self) -> &'static str {
        match self {
            LoggingError::Filter { .. } => "filter",
            LoggingError::AlreadyInstalled => "already_installed",
        }
    }
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info`, `berth=debug,kube=warn`).
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LoggingError::Filter {
        filter: filter.to_string(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}
