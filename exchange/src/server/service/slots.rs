//! Query slots: at most `max_concurrent` statements plan or run at once, and one principal
//! holds at most half of them (rounded up), so that one analyst cannot take them all
//! (review 16: eight stalled readers held every slot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The server's slots.
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Each principal's share, made on first use (principals are few: the policy's).
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    total: usize,
    per_principal: usize,
    wait: Duration,
}

/// A slot, released when dropped.
pub(crate) struct Slot {
    permit: OwnedSemaphorePermit,
    share: OwnedSemaphorePermit,
}

/// One of the server's slots, without the principal's share.
pub(crate) struct ServerSlot {
    _permit: OwnedSemaphorePermit,
}

/// A principal's share of the slots, without the server's.
pub(crate) struct Share {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The server's slot and the principal's share, to be released apart: a cut
    /// statement gives the server's back at once, the principal's once its threads exit.
    pub(crate) fn split(self) -> (ServerSlot, Share) {
        (
            ServerSlot {
                _permit: self.permit,
            },
            Share {
                _permit: self.share,
            },
        )
    }
}

impl Slots {
    /// `total` slots; a statement waits at most `wait` for one.
    pub(crate) fn new(total: usize, wait: Duration) -> Self {
        let total = total.max(1);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            shares: Mutex::new(HashMap::new()),
            total,
            per_principal: total.div_ceil(2),
            wait,
        }
    }

    /// A slot for `principal`, waiting at most `wait` in all for the principal's share and
    /// then for the server's; or why there is none (for the client and the audit log).
    pub(crate) async fn take(&self, principal: &str) -> Result<Slot, String> {
        let unavailable = || "slots unavailable".to_string();
        let share = {
            let mut shares = self.shares.lock().map_err(|_| unavailable())?;
            Arc::clone(
                shares
                    .entry(principal.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_principal))),
            )
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let share = tokio::time::timeout_at(deadline, share.acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "{principal} already runs {} queries, as many as one principal may of this server's {}, and none finished within {:?} (a statement cut at its deadline counts until its threads have stopped): try again later",
                    self.per_principal, self.total, self.wait
                )
            })?
            .map_err(|_| unavailable())?;
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "{} queries are running and none finished within {:?}: try again later",
                    self.total, self.wait
                )
            })?
            .map_err(|_| unavailable())?;
        Ok(Slot { permit, share })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_principal_holds_at_most_half_the_slots() {
        let slots = Slots::new(4, Duration::from_millis(10));
        let a1 = slots.take("a").await.unwrap();
        let _a2 = slots.take("a").await.unwrap();
        let e = slots.take("a").await.err().unwrap();
        assert!(e.contains("a already runs 2 queries"), "{e}");
        let _b1 = slots.take("b").await.unwrap();
        let _b2 = slots.take("b").await.unwrap();
        let e = slots.take("c").await.err().unwrap();
        assert!(e.contains("4 queries are running"), "{e}");
        drop(a1);
        assert!(slots.take("a").await.is_ok());
    }
}
