//! The engine's error type: one enum, each variant carrying the context a user needs.

use std::path::PathBuf;

/// Result with the engine's error.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job file or the Rust-built graph is invalid. The message is complete and
    /// names the file, line, column and field where they are known.
    #[error("{0}")]
    Config(String),
    /// An Arrow kernel failed.
    #[error("arrow error in {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A SQL expression failed to plan or evaluate.
    #[error("expression `{expr}`: {message}")]
    Expr { expr: String, message: String },
    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A connector failed; `retryable` tells the runtime whether backing off may help.
    #[error("connector {connector}: {message}")]
    Connector {
        connector: String,
        message: String,
        retryable: bool,
    },
    /// An operator failed while processing.
    #[error("operator {operator}: {message}")]
    Operator { operator: String, message: String },
    /// State could not be read or written.
    #[error("state {state}: {message}")]
    State { state: String, message: String },
    /// Writing, reading or restoring a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A task of the runtime died or a channel closed unexpectedly.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A neighbouring task of the job stopped (its channel closed): the consequence of
    /// another task's failure, never reported in place of that failure.
    #[error("runtime: {0}")]
    Disconnected(&'static str),
}

impl EngineError {
    /// Whether this error only says that another task stopped (see
    /// [`EngineError::Disconnected`]).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, EngineError::Disconnected(_))
    }

    /// Wraps an Arrow error with what was being done.
    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        EngineError::Arrow {
            context: context.into(),
            source,
        }
    }

    /// An I/O error on a path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An operator's processing error.
    pub fn operator(operator: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Operator {
            operator: operator.into(),
            message: message.into(),
        }
    }

    /// A connector's error.
    pub fn connector(
        connector: impl Into<String>,
        message: impl Into<String>,
        retryable: bool,
    ) -> Self {
        EngineError::Connector {
            connector: connector.into(),
            message: message.into(),
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Keep `Result` cheap to move on the hot path.
        assert!(std::mem::size_of::<EngineError>() <= 80);
    }
}
