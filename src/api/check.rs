//! `POST /v1/check` and `POST /v1/check/batch`: one request or up to `--max-batch`, each decided
//! through the one decision path and answered in the one decision wire shape.

use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use super::{Api, ApiError};
use crate::audit::Extra;
use crate::decision::{CheckRequest, Engine, Outcome};
use crate::http::{classify_json_error, json_response, DecisionBody};
use crate::telemetry::Endpoint;
use crate::verdict::{Pending, REASON_INVALID_REQUEST};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    checks: Vec<Value>,
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<DecisionBody<'a>>,
}

impl Api {
    pub(super) async fn check(
        &self,
        check: CheckRequest,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let verdicts = &self.verdicts;
        verdicts
            .decide(|engine, pending| {
                let started = Instant::now();
                let outcome = verdicts
                    .evaluate(pending, engine, |e| e.decide(&check))
                    .map_err(ApiError::Request)?;
                self.metrics
                    .observe_check(Endpoint::Check, started.elapsed());
                verdicts.record(
                    pending,
                    engine,
                    "api:check",
                    Some(&check),
                    &outcome,
                    started,
                    Extra::default(),
                );
                Ok(json_response(
                    StatusCode::OK,
                    &DecisionBody::new(engine, outcome),
                ))
            })
            .await
    }

    pub(super) async fn check_batch(
        &self,
        batch: BatchRequest,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        self.within_batch_limit(batch.checks.len())?;
        let verdicts = &self.verdicts;
        verdicts
            .decide(|engine, pending| {
                self.metrics.observe_batch(batch.checks.len());
                let started = Instant::now();
                let results: Vec<DecisionBody<'_>> = batch
                    .checks
                    .into_iter()
                    .enumerate()
                    .map(|(index, item)| self.decide_item(engine, index, item, pending))
                    .collect();
                self.metrics
                    .observe_check(Endpoint::Batch, started.elapsed());
                Ok(json_response(StatusCode::OK, &BatchResponse { results }))
            })
            .await
    }

    /// Decide one batch item, recording it in `pending`.
    fn decide_item<'a>(
        &self,
        engine: &'a Engine,
        index: usize,
        item: Value,
        pending: &mut Pending,
    ) -> DecisionBody<'a> {
        let started = Instant::now();
        let check: Result<CheckRequest, ApiError> = serde_path_to_error::deserialize(item)
            .map_err(|e| classify_json_error(e.path().to_string(), e.into_inner()));
        let (error, check) = match check {
            Ok(check) => match self
                .verdicts
                .evaluate(pending, engine, |e| e.decide(&check))
            {
                Ok(outcome) => {
                    self.verdicts.record(
                        pending,
                        engine,
                        "api:batch",
                        Some(&check),
                        &outcome,
                        started,
                        Extra::default(),
                    );
                    return DecisionBody::new(engine, outcome);
                }
                Err(e) => (ApiError::Request(e), Some(check)),
            },
            Err(e) => (e, None),
        };
        let outcome = self.invalid_item(engine, "api:batch", check.as_ref(), started, pending);
        DecisionBody::new(engine, outcome)
            .with_error(error.body_with_field_prefix(&format!("checks[{index}]")))
    }

    /// An item that cannot be evaluated: a deny (`invalid_request`) with its own id, counted and
    /// logged like any other decision.
    pub(super) fn invalid_item(
        &self,
        engine: &Engine,
        origin: &'static str,
        check: Option<&CheckRequest>,
        started: Instant,
        pending: &mut Pending,
    ) -> Outcome {
        self.verdicts.deny(
            pending,
            engine,
            origin,
            check,
            REASON_INVALID_REQUEST,
            started,
        )
    }
}
