//! The Kafka connector (`type: kafka`): a source that reads partitions as splits with
//! positions in checkpoints ([`source`]), and a sink with at-least-once or exactly-once
//! (transactional) delivery ([`sink`]). Both run on librdkafka (bundled, built from
//! source by `rdkafka`).
//!
//! What both share lives here: the connection options (`brokers`, `properties` passed
//! to librdkafka with `${VAR}` taken from the environment, `connect_timeout`), the
//! librdkafka client context that routes its logs to `tracing` and remembers whether
//! the brokers are reachable, and duration options.

pub mod bench;
pub mod replay;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use weir_engine::registry::FieldError;

pub use sink::KafkaSinkFactory;
pub use source::KafkaSourceFactory;

/// How to reach the cluster: the keys every Kafka source and sink has (`brokers`,
/// `properties`, `connect_timeout`; see their options for the words).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// More librdkafka settings; `${NAME}` is an environment variable.
    pub properties: BTreeMap<String, String>,
    /// How long connecting at start may take.
    pub connect_timeout: Option<String>,
}

impl Connection {
    /// The librdkafka configuration of this connection: `bootstrap.servers`, then the
    /// `properties` with environment variables expanded. `fixed` settings (the
    /// connector's own) override the user's; an error names the offending key.
    pub fn client_config(&self, fixed: &[(&str, String)]) -> Result<ClientConfig, FieldError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        if self.brokers.trim().is_empty() {
            return Err(FieldError::at("/brokers", "must name at least one broker"));
        }
        for (k, v) in &self.properties {
            let value = expand_env(v).map_err(|m| FieldError::at(format!("/properties/{k}"), m))?;
            config.set(k, value);
        }
        for (k, v) in fixed {
            config.set(*k, v);
        }
        // librdkafka's own debug contexts (`properties: { debug: fetch }`) are logged
        // at debug level (target `librdkafka`); otherwise only its warnings.
        config.set_log_level(if self.properties.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
        Ok(config)
    }

    /// The connect timeout (default 10s).
    pub fn connect_timeout(&self) -> Result<Duration, FieldError> {
        duration_option(
            &self.connect_timeout,
            "/connect_timeout",
            Duration::from_secs(10),
        )
    }

    /// The property keys set, for `weir explain` (values are secrets).
    pub fn describe_properties(&self) -> String {
        if self.properties.is_empty() {
            String::new()
        } else {
            format!(
                " (properties: {})",
                self.properties
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

pub(crate) use crate::options::{duration_option, expand_env};

/// What the librdkafka client context saw: whether the brokers answer, the last error,
/// and per-partition consumer lag from its statistics.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Set while librdkafka reports every broker down (transport failures).
    pub brokers_down: AtomicBool,
    /// Milliseconds since the epoch of the last transport error, 0 if none.
    pub last_error_ms: AtomicI64,
    /// The last error's text.
    pub last_error: Mutex<Option<String>>,
    /// Consumer lag by (topic, partition), from librdkafka's statistics.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl Health {
    pub fn record_error(&self, text: String) {
        self.last_error_ms.store(
            weir_engine::checkpoint::coordinator::now_ms(),
            Ordering::Relaxed,
        );
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(text);
        }
    }

    /// The brokers answered: the next outage is reported again.
    pub fn answered(&self) {
        self.brokers_down.store(false, Ordering::Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The client context of weir's Kafka clients: librdkafka's log lines go to `tracing`
/// (target `librdkafka`), errors and statistics to [`Health`].
#[derive(Clone)]
pub(crate) struct WeirContext {
    /// Which client, for log lines (`source logs[0]`, `sink alerts[1]`).
    pub name: Arc<str>,
    pub health: Arc<Health>,
}

impl ClientContext for WeirContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let name = &*self.name;
        // Connection failures are librdkafka errors it retries by itself; they reach
        // `error` below (one warning per outage), not the log, line by line.
        if fac == "FAIL" {
            tracing::debug!(target: "librdkafka", client = name, "{fac}: {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", client = name, "{fac}: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::info!(target: "librdkafka", client = name, "{fac}: {message}")
            }
            _ => tracing::debug!(target: "librdkafka", client = name, "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        if down && !self.health.brokers_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                client = &*self.name,
                "every broker is unreachable ({reason}); retrying until they answer or \
                 `unavailable_timeout` passes"
            );
        }
        self.health.record_error(format!("{error}: {reason}"));
        tracing::debug!(client = &*self.name, error = %error, reason, "kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        let mut lags = BTreeMap::new();
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's "internal" partition. Its `consumer_lag` counts from
                // the *committed* offset, which weir (assigning partitions itself) only
                // has with a `group`: the lag is the partition's end (last stable offset,
                // else high watermark) minus the position handed to the application.
                if *p < 0 {
                    continue;
                }
                let end = if part.ls_offset >= 0 {
                    part.ls_offset
                } else {
                    part.hi_offset
                };
                let lag = if part.app_offset >= 0 && end >= 0 {
                    (end - part.app_offset).max(0)
                } else {
                    part.consumer_lag
                };
                if lag >= 0 {
                    lags.insert((topic.clone(), *p), lag);
                }
            }
        }
        if let Ok(mut l) = self.health.lag.lock() {
            *l = lags;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_are_expanded_and_missing_ones_named() {
        std::env::set_var("WEIR_TEST_KAFKA_SECRET", "s3cr3t");
        assert_eq!(
            expand_env("user:${WEIR_TEST_KAFKA_SECRET}!").as_deref(),
            Ok("user:s3cr3t!")
        );
        assert_eq!(expand_env("plain").as_deref(), Ok("plain"));
        let e = expand_env("${WEIR_TEST_NOT_SET_ANYWHERE}").expect_err("unset");
        assert!(e.contains("WEIR_TEST_NOT_SET_ANYWHERE"), "{e}");
        assert!(expand_env("${OPEN").is_err());
    }

    #[test]
    fn secrets_are_not_described() {
        let c = Connection {
            brokers: "b:9092".into(),
            properties: [("sasl.password".to_string(), "hunter2".to_string())]
                .into_iter()
                .collect(),
            connect_timeout: None,
        };
        let d = c.describe_properties();
        assert!(d.contains("sasl.password") && !d.contains("hunter2"), "{d}");
    }
}
