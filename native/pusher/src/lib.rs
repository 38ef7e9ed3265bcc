//! Event delivery core of mongoose_event_pusher.
//!
//! Knows nothing about Erlang: the NIF crate turns terms into [`Envelope`]s and pushes
//! them into an [`Instance`], which owns a bounded queue and worker tasks on a tokio
//! runtime, retries with backoff, drains on stop and reports outcomes in batches
//! through a [`report::ReportSink`].

pub mod backend;
pub mod connection;
pub mod form;
pub mod handover;
pub mod http;
pub mod instance;
pub mod push;
pub mod queue;
pub mod rabbit;
pub mod reason;
pub mod report;
pub mod retry;
pub mod sns;
pub mod stats;

pub use backend::{Backend, Verdict};
pub use instance::{Instance, InstanceConfig, PushError, StopSummary};
pub use queue::{Envelope, Overflow, QueueLimits};
pub use reason::Reason;
pub use retry::RetryPolicy;
pub use stats::{ConnectionCounters, ConnectionSnapshot, Stats, StatsSnapshot};
