//! Policy test cases (`flex-auth test`): a YAML or JSON file of requests and the decision and
//! reasons each must get, run against a loaded engine.
//!
//! ```yaml
//! cases:
//!   - name: bridge may sign for itself
//!     request: {subject: {id: agt-state-hub-bridge}, action: sign,
//!               resource: {type: Actor, id: agt-state-hub-bridge},
//!               context: {ttl_hours: 4, principals: [state-hub]}}
//!     expect: {decision: allow, reasons: []}
//!   - name: an AuthZEN request, mapped as /access/v1/evaluation maps it
//!     authzen: {subject: {type: user, id: alice}, action: {name: read},
//!               resource: {type: note, id: n9, properties: {owner: {type: user, id: alice}}}}
//!     expect: {decision: allow}
//! ```

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::decision::{CheckRequest, Decision, Engine};

/// A file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// The request, in `/v1/check` form.
    #[serde(default)]
    pub request: Option<CheckRequest>,
    /// Or the request in AuthZEN form (`/access/v1/evaluation`), properties included.
    #[serde(default)]
    pub authzen: Option<crate::authzen::Evaluation>,
    /// What must come back.
    pub expect: Expectation,
}

/// The expected answer. `reasons`, when given, must match exactly (order-insensitive);
/// `policies`, when given, must each be among the determining policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Allow or deny.
    pub decision: Decision,
    /// Reason codes.
    #[serde(default)]
    pub reasons: Option<Vec<String>>,
    /// Policy ids that must be among those reported.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

/// Why a case file cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Unreadable.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a valid case file.
    #[error("`{path}`: {message}")]
    Parse {
        /// The path.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
}

/// Read a case file (YAML, of which JSON is a subset).
pub fn load_cases(path: &Path) -> Result<CaseFile, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| SuiteError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// `None` when it passed, else what differed.
    pub failure: Option<String>,
    /// The policies that determined the case's decision (the satisfied permits of an allow, the
    /// satisfied forbids of a deny; never a policy that failed to evaluate). Empty when the
    /// request was invalid.
    pub determined: Vec<String>,
    /// The reasons the decision reported.
    pub reasons: Vec<String>,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "ok    {}", self.name),
            Some(diff) => write!(f, "FAIL  {}\n{diff}", self.name),
        }
    }
}

/// Run every case against the engine.
pub fn run_cases(engine: &Engine, file: CaseFile) -> Vec<CaseResult> {
    file.cases
        .into_iter()
        .map(|case| {
            let decided = match (&case.request, &case.authzen) {
                (Some(request), None) => engine.decide(request),
                (None, Some(evaluation)) => evaluation
                    .clone()
                    .into_mapped()
                    .decide(engine, crate::authzen::PropertiesMode::default()),
                _ => Err(crate::decision::RequestError {
                    field: "case",
                    message: "give exactly one of `request` and `authzen`".to_owned(),
                }),
            };
            let (determined, reasons) = match &decided {
                Ok(outcome) => (
                    outcome
                        .policies
                        .iter()
                        .filter(|p| !outcome.errors.iter().any(|e| &e.policy == *p))
                        .cloned()
                        .collect(),
                    outcome.reasons.clone(),
                ),
                Err(_) => (Vec::new(), Vec::new()),
            };
            let failure = match decided {
                Err(e) => Some(format!(
                    "      expected: {}\n      got:      invalid request: {e}",
                    describe(case.expect.decision, case.expect.reasons.as_deref())
                )),
                Ok(outcome) => {
                    let mut got_reasons = outcome.reasons.clone();
                    got_reasons.sort();
                    let reasons_ok = case.expect.reasons.as_ref().is_none_or(|want| {
                        let mut want = want.clone();
                        want.sort();
                        want == got_reasons
                    });
                    let missing_policies: Vec<&String> = case
                        .expect
                        .policies
                        .iter()
                        .flatten()
                        .filter(|p| !outcome.policies.contains(p))
                        .collect();
                    if outcome.decision == case.expect.decision
                        && reasons_ok
                        && missing_policies.is_empty()
                    {
                        None
                    } else {
                        let mut diff = format!(
                            "      expected: {}\n      got:      {} (policies: [{}], {})",
                            describe(case.expect.decision, case.expect.reasons.as_deref()),
                            describe(outcome.decision, Some(&outcome.reasons)),
                            outcome.policies.join(", "),
                            outcome.id
                        );
                        if !missing_policies.is_empty() {
                            let names: Vec<&str> =
                                missing_policies.iter().map(|s| s.as_str()).collect();
                            diff.push_str(&format!(
                                "\n      missing policies: [{}]",
                                names.join(", ")
                            ));
                        }
                        for e in &outcome.errors {
                            diff.push_str(&format!(
                                "\n      policy `{}` erred: {}",
                                e.policy, e.message
                            ));
                        }
                        Some(diff)
                    }
                }
            };
            CaseResult {
                name: case.name,
                failure,
                determined,
                reasons,
            }
        })
        .collect()
}

fn describe(decision: Decision, reasons: Option<&[String]>) -> String {
    match reasons {
        Some(r) => format!("{} [{}]", decision.as_str(), r.join(", ")),
        None => decision.as_str().to_owned(),
    }
}

/// Which of a package's policies and reasons a run of cases reached (`flex-auth test
/// --coverage`): per policy, how many cases it determined. The percentage is of policies; the
/// reasons the package declares — each `forbid`'s `@reason` (`forbidden_by_policy` without
/// one) — are listed with how many cases produced each, and any other reason a case produced
/// (`no_matching_permit`, `policy_error`) beside them.
#[derive(Debug)]
pub struct Coverage {
    policies: Vec<PolicyCoverage>,
    reasons: Vec<(String, usize)>,
    other_reasons: std::collections::BTreeMap<String, usize>,
}

/// One policy's line in a coverage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCoverage {
    /// The policy id.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// A `forbid`'s reason code.
    pub reason: Option<String>,
    /// Cases it determined.
    pub cases: usize,
}

impl Coverage {
    /// Nothing reached yet, over `package`'s policies (in id order) and reasons.
    pub fn new(package: &crate::policy::PolicyPackage) -> Self {
        let mut policies: Vec<PolicyCoverage> = package
            .policies()
            .policies()
            .map(|policy| {
                let forbid = policy.effect() == cedar_policy::Effect::Forbid;
                PolicyCoverage {
                    id: policy.id().to_string(),
                    effect: if forbid { "forbid" } else { "permit" },
                    reason: forbid.then(|| {
                        package
                            .reason_of(policy.id())
                            .unwrap_or(crate::decision::REASON_FORBIDDEN)
                            .to_owned()
                    }),
                    cases: 0,
                }
            })
            .collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let mut reasons: Vec<(String, usize)> = policies
            .iter()
            .filter_map(|p| p.reason.clone())
            .map(|r| (r, 0))
            .collect();
        reasons.sort();
        reasons.dedup();
        Self {
            policies,
            reasons,
            other_reasons: std::collections::BTreeMap::new(),
        }
    }

    /// Count what one case reached.
    pub fn add(&mut self, result: &CaseResult) {
        for id in &result.determined {
            if let Some(policy) = self.policies.iter_mut().find(|p| &p.id == id) {
                policy.cases += 1;
            }
        }
        for reason in &result.reasons {
            match self.reasons.iter_mut().find(|(r, _)| r == reason) {
                Some(entry) => entry.1 += 1,
                None => *self.other_reasons.entry(reason.clone()).or_default() += 1,
            }
        }
    }

    /// Per policy, in id order.
    pub fn policies(&self) -> &[PolicyCoverage] {
        &self.policies
    }

    /// Policies no case determined.
    pub fn unreached(&self) -> impl Iterator<Item = &PolicyCoverage> {
        self.policies.iter().filter(|p| p.cases == 0)
    }

    /// Reasons the package declares that no case produced.
    pub fn unproduced_reasons(&self) -> impl Iterator<Item = &str> {
        self.reasons
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(r, _)| r.as_str())
    }

    /// Percentage of policies that determined at least one case (100 for a package with none).
    pub fn percent(&self) -> f64 {
        if self.policies.is_empty() {
            return 100.0;
        }
        let reached = self.policies.len() - self.unreached().count();
        100.0 * reached as f64 / self.policies.len() as f64
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reached = self.policies.len() - self.unreached().count();
        writeln!(
            f,
            "coverage: {reached} of {} policies determined a case ({:.1} %)",
            self.policies.len(),
            self.percent()
        )?;
        let width = self.policies.iter().map(|p| p.id.len()).max().unwrap_or(0);
        for p in &self.policies {
            let mut line = format!(
                "  {:<6} {:<width$}  {:>4} {:<5}",
                p.effect,
                p.id,
                p.cases,
                if p.cases == 1 { "case" } else { "cases" },
            );
            if let Some(reason) = &p.reason {
                line.push_str(&format!(" [{reason}]"));
            }
            if p.cases == 0 {
                line.push_str("  NOT REACHED");
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        let unreached: Vec<&str> = self.unreached().map(|p| p.id.as_str()).collect();
        if !unreached.is_empty() {
            writeln!(f, "policies no case reached: {}", unreached.join(", "))?;
        }
        let reasons: Vec<&str> = self.unproduced_reasons().collect();
        if !reasons.is_empty() {
            writeln!(f, "reasons no case produced: {}", reasons.join(", "))?;
        }
        if !self.other_reasons.is_empty() {
            let others: Vec<String> = self
                .other_reasons
                .iter()
                .map(|(r, n)| format!("{r} ({n})"))
                .collect();
            writeln!(f, "other reasons produced: {}", others.join(", "))?;
        }
        Ok(())
    }
}
