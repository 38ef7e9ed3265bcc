//! The Erlang process that receives an instance's reports (and, for push, its
//! publishes to route). It lives under a supervisor: a restarted reporter takes the
//! instance over with `set_reporter`, and `pusher::handover` holds what no live
//! process took in between.

use std::sync::{Mutex, MutexGuard};

use pusher::handover::{HandedOver, Handover};
use pusher::report::{ReportBatch, ReportSink};
use rustler::{Encoder, LocalPid, OwnedEnv};

use crate::atoms;
use crate::encode::encode_batch;

/// The current reporter of one instance, shared by its report sink and its router.
pub(crate) struct ReportTarget {
    pid: Mutex<LocalPid>,
    handover: Handover,
}

impl ReportTarget {
    pub(crate) fn new(pid: LocalPid) -> Self {
        ReportTarget {
            pid: Mutex::new(pid),
            handover: Handover::default(),
        }
    }

    pub(crate) fn pid(&self) -> LocalPid {
        *self.lock_pid()
    }

    /// Makes `pid` the reporter; answers what its predecessors were handed. The caller
    /// then calls `send_held` from a thread that is not a scheduler's.
    pub(crate) fn replace(&self, pid: LocalPid) -> HandedOver {
        self.handover.switch(|| *self.lock_pid() = pid)
    }

    pub(crate) fn sent(&self) -> HandedOver {
        self.handover.handed_over()
    }

    /// Sends what is held to the reporter. Runs on a tokio thread: sending from a
    /// scheduler thread panics.
    pub(crate) fn send_held(&self) {
        let pid = self.pid();
        self.handover.hand_over(|batch| send(&pid, batch));
    }

    fn lock_pid(&self) -> MutexGuard<'_, LocalPid> {
        self.pid
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `{mod_event_pusher_nif, report, Batch}`; false when the process is gone.
fn send(pid: &LocalPid, batch: &ReportBatch) -> bool {
    OwnedEnv::new()
        .send_and_clear(pid, |env| {
            let report = (atoms::mod_event_pusher_nif(), atoms::report());
            (report.0, report.1, encode_batch(env, batch)).encode(env)
        })
        .is_ok()
}

impl ReportSink for ReportTarget {
    fn send(&self, batch: ReportBatch) {
        let pid = self.pid();
        self.handover.push(batch, |batch| send(&pid, batch));
    }
}
