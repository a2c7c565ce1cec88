//! weir's integration tests, in one binary (faster to link than one per file):
//! golden YAML jobs, backpressure, event time across splits and inputs, bad input,
//! and the Rust API building the same graph as YAML.

mod backpressure;
mod cli;
mod common;
mod event_time;
mod golden;
mod partitioning;
mod rust_api;
mod windows_oracle;
