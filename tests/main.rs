//! weir's integration tests, in one binary (faster to link than one per file):
//! golden YAML jobs, backpressure, event time across splits and inputs, bad input,
//! the Rust API building the same graph as YAML, and exactly-once under SIGKILL.

mod backpressure;
mod cli;
mod common;
#[cfg(unix)]
mod dlq;
mod event_time;
#[cfg(unix)]
mod fault_injection;
mod fuzz;
mod golden;
#[cfg(unix)]
mod hardening;
mod joins_oracle;
#[cfg(unix)]
mod kafka;
#[cfg(unix)]
mod newcomer;
#[cfg(unix)]
mod ops;
mod partitioning;
#[cfg(unix)]
mod postgres;
mod rust_api;
#[cfg(unix)]
mod s3_checkpoints;
#[cfg(unix)]
mod savepoint;
#[cfg(unix)]
mod signals;
#[cfg(unix)]
mod state_rocksdb;
mod windows_oracle;
