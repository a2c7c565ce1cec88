//! # weir-engine
//!
//! The engine of weir: the job graph and its planner, the task runtime with bounded
//! channels and backpressure, event time and watermarks, the keyed state API, and the
//! pipeline spec (YAML) with its validation. The engine knows no concrete operator or
//! connector: it defines the traits ([`Operator`](operator::Operator),
//! [`Source`](source::Source), [`Sink`](sink::Sink), [`Decoder`](source::Decoder)) and a
//! [`Registry`](registry::Registry) through which YAML names resolve to factories.
//!
//! ```
//! use weir_engine::message::{Message, Watermark};
//! let m = Message::Watermark(Watermark::EventTime(1_000));
//! assert!(m.is_control());
//! ```

pub mod aggregate;
pub mod batch;
pub mod channel;
pub mod checkpoint;
pub mod env;
pub mod error;
pub mod expr;
pub mod fault;
pub mod graph;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod planner;
pub mod query;
pub mod registry;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod time;

pub use error::{EngineError, Result};
