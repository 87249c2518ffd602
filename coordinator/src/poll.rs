//! One way to wait for something outside the process — a host to enroll, a leader to be
//! elected, a task to run — with a deadline: [`poll_until`]. Every bounded wait of the CLI's
//! operations goes through it, so each one says what it waited for and what it last saw
//! when it gives up.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one look found.
#[derive(Debug)]
pub enum Attempt<T> {
    /// The wait is over, with this value.
    Done(T),
    /// Not yet; the text says what was seen (it ends up in the time-out's message).
    NotYet(String),
}

/// Why [`poll_until`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum PollError<E> {
    #[error("timed out after {after:.1?} waiting for {what} (last seen: {last})")]
    TimedOut { what: String, after: Duration, last: String },
    /// A look failed in a way that waiting will not mend.
    #[error(transparent)]
    Failed(E),
}

impl<E> PollError<E> {
    /// The failure inside, or `None` for a time-out.
    pub fn into_failed(self) -> Option<E> {
        match self {
            PollError::Failed(e) => Some(e),
            PollError::TimedOut { .. } => None,
        }
    }
}

/// Calls `look` every `every` until it returns [`Attempt::Done`] (→ `Ok`), returns an error
/// (→ [`PollError::Failed`] at once), or `deadline` passes (→ [`PollError::TimedOut`] naming
/// `what` and the last [`Attempt::NotYet`]). `look` runs at least once, even past the
/// deadline. Works under `tokio::time::pause()`.
pub async fn poll_until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    every: Duration,
    mut look: F,
) -> Result<T, PollError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<T>, E>>,
{
    let start = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let last = match look().await.map_err(PollError::Failed)? {
            Attempt::Done(v) => return Ok(v),
            Attempt::NotYet(seen) => seen,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(PollError::TimedOut { what: what.to_string(), after: now - start, last });
        }
        tokio::time::sleep_until((now + every).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_done_and_looks_every_period() {
        let mut looks = 0;
        let got: Result<u32, PollError<String>> =
            poll_until("three looks", Instant::now() + Duration::from_secs(60), Duration::from_secs(1), || {
                looks += 1;
                let n = looks;
                async move { Ok(if n == 3 { Attempt::Done(n) } else { Attempt::NotYet(format!("look {n}")) }) }
            })
            .await;
        assert_eq!(got.ok(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_out_names_what_and_the_last_thing_seen() {
        let err = poll_until::<(), String, _, _>(
            "a leader",
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(1),
            || async { Ok(Attempt::NotYet("no leader among 2 managers".into())) },
        )
        .await
        .expect_err("never done");
        let msg = err.to_string();
        assert!(msg.contains("a leader") && msg.contains("no leader among 2 managers"), "{msg}");
        assert!(matches!(err, PollError::TimedOut { after, .. } if after >= Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_look_ends_the_wait_at_once() {
        let err = poll_until::<(), _, _, _>(
            "anything",
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            || async { Err::<Attempt<()>, _>("refused") },
        )
        .await
        .expect_err("failed");
        assert_eq!(err.into_failed(), Some("refused"));
    }
}
