//! The AuthZEN endpoints of the decision API (the wire format is [`crate::authzen`]): the same
//! readiness, engine, decision ids, decision log and metrics as `/v1/check`.

use std::time::Instant;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::Api;
use crate::authzen::{
    configuration, Evaluation, EvaluationResponse, EvaluationsRequest, EvaluationsResponse, Mapped,
};
use crate::decision::{Engine, Outcome};
use crate::http::{classify_json_error, json_response, ApiError};
// Latency is observed as `check` (one evaluation) or `batch` (an evaluations array), like the
// /v1 endpoints; responses are counted under the `authzen` endpoint label.
use crate::audit::Extra;
use crate::telemetry::Endpoint;
use crate::verdict::Pending;

/// Decision-log origin of AuthZEN decisions.
const ORIGIN: &str = "api:authzen";

impl Api {
    /// `POST /access/v1/evaluation`.
    pub(super) async fn authzen_evaluation(
        &self,
        evaluation: Evaluation,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        self.answer_one(evaluation.into_mapped()).await
    }

    /// Decide one evaluation, log it (waiting for durability in required mode) and answer it.
    async fn answer_one(&self, evaluation: Mapped) -> Result<Response<Full<Bytes>>, ApiError> {
        let verdicts = &self.verdicts;
        verdicts
            .decide(|engine, pending| {
                let started = Instant::now();
                let outcome = self.evaluate(engine, &evaluation, started, pending)?;
                self.metrics
                    .observe_check(Endpoint::Check, started.elapsed());
                Ok(json_response(
                    StatusCode::OK,
                    &self.decided(engine, &outcome),
                ))
            })
            .await
    }

    /// `POST /access/v1/evaluations`.
    pub(super) async fn authzen_evaluations(
        &self,
        batch: EvaluationsRequest,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let items = batch.evaluations.as_deref().unwrap_or_default();
        self.within_batch_limit(items.len())?;
        if items.is_empty() {
            // No `evaluations`: the top level is one evaluation, answered as one.
            let evaluation: Evaluation = serde_path_to_error::deserialize(batch.top_level())
                .map_err(|e| classify_json_error(e.path().to_string(), e.into_inner()))?;
            return self.answer_one(evaluation.into_mapped()).await;
        }
        let semantic = batch
            .options
            .as_ref()
            .map(|o| o.evaluations_semantic)
            .unwrap_or_default();
        let verdicts = &self.verdicts;
        verdicts
            .decide(|engine, pending| {
                let started = Instant::now();
                self.metrics.observe_batch(items.len());
                let mut evaluations = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    let item_started = Instant::now();
                    let answer =
                        self.evaluate_item(engine, index, &batch.item(item), item_started, pending);
                    let stop = semantic.stops_after(answer.decision);
                    evaluations.push(answer);
                    if stop {
                        break;
                    }
                }
                self.metrics
                    .observe_check(Endpoint::Batch, started.elapsed());
                Ok(json_response(
                    StatusCode::OK,
                    &EvaluationsResponse { evaluations },
                ))
            })
            .await
    }

    /// `GET /.well-known/authzen-configuration`.
    pub(super) fn authzen_configuration<B>(
        &self,
        request: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let base = match &self.config.authzen.base_url {
            Some(base) => base.clone(),
            None => {
                // h2 carries the authority in the URI, HTTP/1.1 in Host.
                let host = request
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        request
                            .headers()
                            .get(HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                    })
                    .filter(|h| h.parse::<http::uri::Authority>().is_ok())
                    .ok_or_else(|| ApiError::InvalidField {
                        field: "host".to_owned(),
                        message: "no valid Host to build the endpoint URLs from; send one, or \
                                  start flex-auth with --authzen-base-url"
                            .to_owned(),
                    })?;
                let tls = self.listener.as_ref().is_some_and(|l| l.1.is_some());
                format!("{}://{host}", if tls { "https" } else { "http" })
            }
        };
        Ok(json_response(StatusCode::OK, &configuration(&base)))
    }

    /// Decide one evaluation and record it in `pending`.
    fn evaluate(
        &self,
        engine: &Engine,
        evaluation: &Mapped,
        started: Instant,
        pending: &mut Pending,
    ) -> Result<Outcome, ApiError> {
        let mode = self.config.authzen.properties;
        let outcome = self
            .verdicts
            .evaluate(pending, engine, |e| evaluation.decide(e, mode))
            .map_err(ApiError::Request)?;
        let properties = evaluation.recorded_properties();
        self.verdicts.record(
            pending,
            engine,
            ORIGIN,
            Some(&evaluation.check),
            &outcome,
            started,
            Extra {
                credential_sha256: None,
                properties: properties.as_ref(),
                ..Extra::default()
            },
        );
        Ok(outcome)
    }

    /// One item of an evaluations request: a decision, or — when it cannot be evaluated — a
    /// deny with its own decision id that carries the error, logged like any other.
    fn evaluate_item(
        &self,
        engine: &Engine,
        index: usize,
        item: &serde_json::Value,
        started: Instant,
        pending: &mut Pending,
    ) -> EvaluationResponse {
        let parsed: Result<Evaluation, ApiError> = serde_path_to_error::deserialize(item)
            .map_err(|e| classify_json_error(e.path().to_string(), e.into_inner()));
        let (error, check) = match parsed {
            Ok(evaluation) => {
                let evaluation = evaluation.into_mapped();
                match self.evaluate(engine, &evaluation, started, pending) {
                    Ok(outcome) => return self.decided(engine, &outcome),
                    Err(e) => (e, Some(evaluation.check)),
                }
            }
            Err(e) => (e, None),
        };
        let outcome = self.invalid_item(engine, ORIGIN, check.as_ref(), started, pending);
        let body = error.body_with_field_prefix(&format!("evaluations[{index}]"));
        let message = match &body.field {
            Some(field) => format!("{field}: {}", body.message),
            None => body.message.clone(),
        };
        EvaluationResponse::failed(
            &outcome,
            error.status().as_u16(),
            message,
            self.config.authzen.decision_only,
        )
    }

    fn decided(&self, engine: &Engine, outcome: &Outcome) -> EvaluationResponse {
        EvaluationResponse::decided(
            outcome,
            engine.policy().hash().as_str(),
            engine.registry().hash().as_str(),
            engine.bundle_revision(),
            self.config.authzen.decision_only,
        )
    }
}
