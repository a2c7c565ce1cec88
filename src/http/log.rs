//! The latest warnings and errors of the process, kept for the dashboard: a `tracing`
//! layer that formats each WARN or ERROR event (message and fields) into a bounded ring.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Entries kept.
const KEPT: usize = 50;

/// One logged warning or error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// `WARN` or `ERROR`.
    pub level: &'static str,
    /// The message and its fields.
    pub message: String,
}

/// The ring of the latest warnings and errors (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ErrorLog(Arc<Mutex<VecDeque<LogLine>>>);

impl ErrorLog {
    /// The latest entries, oldest first.
    pub fn latest(&self) -> Vec<LogLine> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The layer that fills this log.
    pub fn layer(&self) -> ErrorLogLayer {
        ErrorLogLayer(self.clone())
    }
}

/// A `tracing` layer feeding an [`ErrorLog`].
pub struct ErrorLogLayer(ErrorLog);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ErrorLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            _ => return,
        };
        let mut text = Text(String::new());
        event.record(&mut text);
        let line = LogLine {
            time_ms: super::now_ms(),
            level,
            message: text.0.chars().take(1000).collect(),
        };
        if let Ok(mut q) = (self.0).0.lock() {
            super::push_bounded(&mut q, line, KEPT);
        }
    }
}
