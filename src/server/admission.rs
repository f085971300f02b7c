//! The in-flight budget of one listener (`--max-in-flight`) and the one limited body reader
//! (`--max-body-bytes`, `--body-read-timeout`) every handler uses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::Metrics;

/// A request's claim on its listener's in-flight budget (`--max-in-flight`), a request
/// extension. A request without a body is admitted before its handler runs; one with a body is
/// admitted by the handler once the body is read ([`read_body`]) or, for a body that streams
/// to an upstream, before it decides — so a client that trickles its body holds a connection,
/// never a slot that requests which are ready to be decided need.
///
/// Architecture invariant: every handler that reads or forwards a request body calls
/// [`Admission::admit`] before it decides; the server admits every other request itself.
#[derive(Debug)]
pub struct Admission {
    budget: Arc<Budget>,
    /// The probes are never shed.
    exempt: bool,
    permit: std::sync::OnceLock<OwnedSemaphorePermit>,
}

/// What every admission of one listener shares (one `Arc` clone per request, not one per metric).
#[derive(Debug)]
pub(super) struct Budget {
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) body_read_timeout: Duration,
    pub(super) metrics: Option<Metrics>,
}

/// The in-flight limit is reached: 503 `overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl Admission {
    pub(super) fn new(budget: Arc<Budget>, exempt: bool) -> Self {
        Self {
            budget,
            exempt,
            permit: std::sync::OnceLock::new(),
        }
    }

    /// Take a slot of the in-flight budget (once; later calls are free).
    pub fn admit(&self) -> Result<(), Overloaded> {
        if self.exempt || self.permit.get().is_some() {
            return Ok(());
        }
        match Arc::clone(&self.budget.in_flight).try_acquire_owned() {
            Ok(permit) => {
                // A second admit of the same request racing this one keeps one permit.
                let _ = self.permit.set(permit);
                Ok(())
            }
            Err(_) => {
                if let Some(metrics) = &self.budget.metrics {
                    metrics.request_shed();
                }
                Err(Overloaded)
            }
        }
    }

    /// How long reading the whole body may take.
    pub fn body_read_timeout(&self) -> Duration {
        self.budget.body_read_timeout
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit (413).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not complete within the body-read timeout (408).
    Timeout(Duration),
    /// The connection failed while reading it (400).
    Read(String),
    /// Read, but the in-flight limit is reached (503).
    Overloaded,
}

/// Read a request body whole: at most `limit` bytes (whether or not a `Content-Length` says so),
/// within the body-read timeout, then take the request's in-flight slot. The one place request
/// bodies are buffered.
pub async fn read_body<B>(
    body: B,
    declared_length: Option<u64>,
    limit: usize,
    admission: Option<&Admission>,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    if declared_length.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let collect = Limited::new(body, limit).collect();
    // In-process callers (no listener, no admission) hand over bodies that are already whole.
    let collected = match admission {
        Some(admission) => tokio::time::timeout(admission.body_read_timeout(), collect)
            .await
            .map_err(|_| BodyError::Timeout(admission.body_read_timeout()))?,
        None => collect.await,
    };
    let collected = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(BodyError::TooLarge { limit })
        }
        Err(e) => return Err(BodyError::Read(e.to_string())),
    };
    if let Some(admission) = admission {
        admission
            .admit()
            .map_err(|Overloaded| BodyError::Overloaded)?;
    }
    Ok(collected)
}

impl From<BodyError> for crate::http::ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge { limit } => Self::BodyTooLarge { limit },
            BodyError::Timeout(after) => Self::BodyTimeout(after),
            BodyError::Read(message) => Self::BodyRead(message),
            BodyError::Overloaded => Self::Overloaded,
        }
    }
}
