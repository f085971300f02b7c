//! Readiness as data: every dependency that can make flex-auth unable to decide registers a
//! [`Probe`] with the API that reports it — the state (shutdown), the decision log, the gate's
//! keys or secret, the proxy's upstream — and `/readyz`, `/v1/status` and the `flex_auth_ready`
//! gauge all read the one [`Report`] built from that list.
//!
//! A leaf: it imports nothing of ours, so the owners of dependencies can implement [`Probe`]
//! without depending on the API that lists them.

use std::sync::Arc;

use serde::Serialize;

/// A dependency whose health decides readiness, registered by whoever owns it.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// The readiness check's name (`upstream`, `jwks`, `decision_log`, `shutdown`).
    fn name(&self) -> &'static str;
    /// The `docs/runbook.md` anchor that explains a failure.
    fn problem(&self) -> &'static str;
    /// `Ok`, or why not.
    fn check(&self) -> Result<(), String>;
    /// When the check passes: why the instance still serves only in a degraded way (a bundle
    /// source that cannot be reached while the last good bundle serves).
    fn warning(&self) -> Option<String> {
        None
    }
}

/// Whoever builds the whole [`Report`] (the decision API, which lists every probe), for another
/// surface that reports readiness in its own protocol (the gRPC health service).
pub trait Reporter: Send + Sync + std::fmt::Debug {
    /// Readiness now.
    fn report(&self) -> Report;
}

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything passes.
    Ready,
    /// The last reload failed and the previous version still serves.
    Degraded,
    /// A decision cannot be made (or must not be asked for): `/readyz` answers 503.
    Unready,
}

impl Status {
    /// As written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unready => "unready",
        }
    }
}

/// One named check as `/readyz` and `/v1/status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// `pass`, `warn` or `fail`.
    pub status: &'static str,
    /// Why it does not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The runbook section that explains it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn pass(name: &'static str) -> Self {
        Self {
            name,
            status: "pass",
            reason: None,
            docs: None,
        }
    }

    /// A failing check, pointing at `docs/runbook.md#PROBLEM`.
    pub fn fail(name: &'static str, reason: String, problem: &str) -> Self {
        Self {
            name,
            status: "fail",
            reason: Some(reason),
            docs: Some(format!("docs/runbook.md#{problem}")),
        }
    }

    /// A warning: serving, but not as configured.
    pub fn warn(name: &'static str, reason: String, problem: &str) -> Self {
        Self {
            status: "warn",
            ..Self::fail(name, reason, problem)
        }
    }
}

/// Readiness at one moment: the status and every check behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The overall answer.
    pub status: Status,
    /// In order: the loaded sources first, then each probe as registered.
    pub checks: Vec<Check>,
}

impl Report {
    /// The sources' own status and checks, then every probe: any failing probe makes the
    /// report unready.
    pub fn new(status: Status, mut checks: Vec<Check>, probes: &[Arc<dyn Probe>]) -> Self {
        let mut status = status;
        for probe in probes {
            match probe.check() {
                Ok(()) => match probe.warning() {
                    None => checks.push(Check::pass(probe.name())),
                    Some(reason) => {
                        checks.push(Check::warn(probe.name(), reason, probe.problem()));
                        if status == Status::Ready {
                            status = Status::Degraded;
                        }
                    }
                },
                Err(reason) => {
                    checks.push(Check::fail(probe.name(), reason, probe.problem()));
                    status = Status::Unready;
                }
            }
        }
        Self { status, checks }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.status != Status::Unready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Result<(), String>);

    impl Probe for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn problem(&self) -> &'static str {
            "fixed-problem"
        }
        fn check(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    #[test]
    fn any_failing_probe_makes_the_report_unready_and_keeps_the_order() {
        let probes: Vec<Arc<dyn Probe>> =
            vec![Arc::new(Fixed(Ok(()))), Arc::new(Fixed(Err("down".into())))];
        let report = Report::new(Status::Degraded, vec![Check::pass("policy")], &probes);
        assert_eq!(report.status, Status::Unready);
        assert!(!report.is_ready());
        let names: Vec<_> = report.checks.iter().map(|c| (c.name, c.status)).collect();
        assert_eq!(
            names,
            [("policy", "pass"), ("fixed", "pass"), ("fixed", "fail")]
        );
        assert_eq!(
            report.checks[2].docs.as_deref(),
            Some("docs/runbook.md#fixed-problem")
        );
        let passing = Report::new(Status::Degraded, Vec::new(), &probes[..1]);
        assert_eq!(passing.status, Status::Degraded);
        assert!(passing.is_ready());
    }
}
