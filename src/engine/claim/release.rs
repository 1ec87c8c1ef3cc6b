//! The release of a claim: only while the record is still this run's.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{JobLock, Lease, Store};
use crate::error::{Error, Result};
use crate::model::JobRecord;
use crate::model::event::{Event, Kind};
use crate::os;
use crate::text as render;

use super::Claim;

/// Whether the record `job` is still the claim `ours`: same label and
/// PID, and the same timestamp and host where the record has them. PHP
/// mama saves a machine rebuilt from its own fields, dropping
/// `job_timestamp`, `job_host` and `job_origin`; while the claiming run
/// lives no other process has its PID here, so the rest still tells.
fn still_ours(ours: &JobRecord, job: &JobRecord) -> bool {
    job.label == ours.label
        && job.pid == ours.pid
        && job.timestamp.is_none_or(|t| Some(t) == ours.timestamp)
        && job
            .host
            .as_ref()
            .is_none_or(|h| Some(h) == ours.host.as_ref())
}

impl Claim {
    /// The descriptor of the machine's job lock, for the job to inherit, so
    /// the machine stays busy while any process of the job lives.
    pub fn lock_fd(&self) -> Option<RawFd> {
        self.lock.as_ref().and_then(JobLock::inheritable_fd)
    }

    /// Keeps the claim while the job runs, where that takes work (a
    /// database lab's session): the flag returned is raised when the claim
    /// was lost, and the job must be stopped. Call it once the signals are
    /// blocked, so the keeper's thread never takes one.
    pub fn keep(&mut self) -> Option<Arc<Lease>> {
        let job = self.job.clone();
        self.lock.as_mut()?.keep(&job)
    }

    /// Gives the machine back: clears the job (a nested run leaves the
    /// outer claim alone). A claim that is no longer ours (cleared by hand,
    /// taken over) is left alone, with a word on stderr. `outcome` (how the
    /// job ended) goes into the history.
    pub fn release(self, store: &Store, outcome: &str) -> Result<()> {
        self.release_with_status(store, outcome, None)
    }

    /// [`Claim::release`] of a run's job, with the `status` mama run exits
    /// with for it, which the `released` event records.
    pub fn release_with_status(
        self,
        store: &Store,
        outcome: &str,
        status: Option<i32>,
    ) -> Result<()> {
        let mut lock = self.lock;
        if let Some(lock) = lock.as_mut() {
            lock.stop_keeping();
        }
        let machine = self.machine.clone();
        let released = store.update(|lab| {
            // Close the job lock inside the transaction, so a waiter it
            // wakes reads the state only after this write. Closed, not
            // unlocked: processes of the job that still run (a nested run
            // that outlives its outer job, leftovers in the background)
            // share it and keep the machine until the last of them ends.
            if let Some(lock) = lock {
                lock.close();
            }
            let Ok(mut machine) = lab.get_mut(&self.machine) else {
                say!(
                    "mama: {} was deleted while the job ran; nothing to release",
                    self.machine
                );
                return Ok(());
            };
            if self.outer.is_none() {
                let current = machine.view().job();
                let ours = current.as_ref().is_some_and(|j| still_ours(&self.job, j));
                if !ours {
                    say!(
                        "mama: the claim on {} was cleared or taken over while the job ran; \
                         leaving the record alone",
                        self.machine
                    );
                    return Ok(());
                }
                machine.clear_job()?;
            }
            let held = os::now() - self.job.timestamp.unwrap_or_else(os::now);
            let detail = format!(
                "{outcome} after {}",
                render::seconds(Duration::from_secs(held.max(0) as u64))
            );
            let mut event = Event::new(Kind::Released, &self.machine)
                .job(&self.job)
                .detail(detail);
            event.status = status;
            lab.record(event);
            Ok(())
        });
        match released {
            // The whole lab was removed while the job ran: nothing holds
            // the claim, and no lab is made anew for its release.
            Err(Error::NoLab(at)) => {
                say!("mama: there is no lab at {at} any more; nothing to release on {machine}");
                Ok(())
            }
            other => other,
        }
    }
}
