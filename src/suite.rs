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
