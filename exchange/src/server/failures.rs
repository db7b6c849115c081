//! Failed logins in the audit log, bounded: an unauthenticated client must not be able to
//! write records without limit (review 45 F2). The first failures of a name in a minute
//! are recorded one by one; past the bound, one record says so and the rest are counted,
//! their number told on the name's first record of a later minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one name recorded one by one per window.
const PER_WINDOW: u32 = 10;

/// The window.
const WINDOW: Duration = Duration::from_secs(60);

/// One name's failures in the current window.
struct Window {
    start: Instant,
    recorded: u32,
    unrecorded: u64,
}

/// Failed logins by name (a principal's, or `(unknown)` for every other): names come
/// from the policy, so the map stays as small as it.
#[derive(Default)]
pub(crate) struct FailedLogins {
    windows: Mutex<HashMap<String, Window>>,
}

impl FailedLogins {
    /// A failure of `who`: the text to add to its record's reason when it is to be
    /// recorded, None when it is only counted.
    pub(crate) fn note(&self, who: &str) -> Option<String> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.entry(who.to_string()).or_insert(Window {
            start: now,
            recorded: 0,
            unrecorded: 0,
        });
        let mut carried = 0;
        if now.duration_since(w.start) >= WINDOW {
            carried = w.unrecorded;
            *w = Window {
                start: now,
                recorded: 0,
                unrecorded: 0,
            };
        }
        w.recorded += 1;
        if w.recorded < PER_WINDOW {
            Some(if carried > 0 {
                format!(
                    " ({carried} more failures before this one were counted, not recorded one by one)"
                )
            } else {
                String::new()
            })
        } else if w.recorded == PER_WINDOW {
            Some(format!(
                " ({PER_WINDOW} in a minute: further failures of this name are counted, not recorded one by one, until the minute is over)"
            ))
        } else {
            w.recorded = PER_WINDOW + 1;
            w.unrecorded += 1;
            None
        }
    }
}

impl FailedLogins {
    /// Failures counted and not yet told, by name; the counts start over (told before the
    /// log is sealed, so none are lost at shutdown).
    pub(crate) fn take_pending(&self) -> Vec<(String, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = windows
            .iter_mut()
            .filter(|(_, w)| w.unrecorded > 0)
            .map(|(name, w)| {
                let n = w.unrecorded;
                w.unrecorded = 0;
                (name.clone(), n)
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_failures_are_counted_not_recorded() {
        let f = FailedLogins::default();
        let recorded: Vec<Option<String>> = (0..25).map(|_| f.note("(unknown)")).collect();
        assert!(recorded[..PER_WINDOW as usize].iter().all(Option::is_some));
        assert!(
            recorded[PER_WINDOW as usize - 1]
                .as_deref()
                .unwrap()
                .contains("counted, not recorded")
        );
        assert!(recorded[PER_WINDOW as usize..].iter().all(Option::is_none));
        // Another name has a bound of its own.
        assert_eq!(f.note("auditor").as_deref(), Some(""));
        // A later window tells how many were only counted.
        {
            let mut w = f.windows.lock().unwrap();
            let u = w.get_mut("(unknown)").unwrap();
            u.start -= WINDOW;
        }
        let next = f.note("(unknown)").unwrap();
        assert!(next.contains("15 more failures"), "{next}");
        // Counted failures are handed over once, at shutdown.
        for _ in 0..12 {
            f.note("auditor");
        }
        assert_eq!(f.take_pending(), vec![("auditor".to_string(), 3)]);
        assert!(f.take_pending().is_empty());
    }
}
