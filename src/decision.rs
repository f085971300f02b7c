//! The decision engine: a typed check request in, a decision with an id, reasons and policy ids
//! out. It does no I/O and knows nothing of HTTP.
//!
//! Fail-closed rules live here: a Cedar evaluation error in any policy turns the decision into a
//! deny with reason `policy_error` (Cedar alone would skip the erroring policy and might allow);
//! a deny with no determining `forbid` reports `no_matching_permit`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, Request,
    RequestValidationError,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::sync::Arc;

use crate::cedar_json;
use crate::policy::PolicyPackage;
use crate::registry::{Registry, SUBJECT_TYPE};
use crate::slice_cache::SliceCache;

/// Reason reported by a deny that no `forbid` determined: no `permit` matched.
pub const REASON_NO_MATCHING_PERMIT: &str = "no_matching_permit";
/// Reason reported when any policy failed to evaluate.
pub const REASON_POLICY_ERROR: &str = "policy_error";
/// Reason of the deny for a proxied or forward-auth request that no route matches.
pub const REASON_NO_ROUTE: &str = "no_route";
/// Reason reported by a determining `forbid` that carries no `@reason`.
pub const REASON_FORBIDDEN: &str = "forbidden_by_policy";
/// Cedar entity type of actions.
pub const ACTION_TYPE: &str = "Action";

/// A check request as callers send it (`POST /v1/check`, a batch item, a test case).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Who asks. `type` defaults to `Subject`.
    pub subject: SubjectRef,
    /// The action name, e.g. `sign`: Cedar `Action::"sign"`.
    pub action: String,
    /// What is acted on.
    pub resource: ResourceRef,
    /// The Cedar context record; absent means empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
}

/// [`CheckRequest`] as the fast reader of `POST /v1/check` reads it
/// (the HTTP layer's `parse_json_fast`): the same fields, and a duplicate key at any depth is an
/// error (serde's derive refuses a field named twice; the context is read by
/// [`crate::json::strict_map`]), so a body it accepts has no duplicate key and the one pass of
/// `serde_json` replaces the duplicate-key pass and the path-tracking parse. Anything it refuses
/// is read again by the full reader, for the error that names the field at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StrictCheckRequest {
    subject: SubjectRef,
    action: String,
    resource: ResourceRef,
    #[serde(default, deserialize_with = "strict_optional_map")]
    context: Option<Map<String, Value>>,
}

impl From<StrictCheckRequest> for CheckRequest {
    fn from(strict: StrictCheckRequest) -> Self {
        let StrictCheckRequest {
            subject,
            action,
            resource,
            context,
        } = strict;
        Self {
            subject,
            action,
            resource,
            context,
        }
    }
}

/// `null` or an object read by [`crate::json::strict_map`].
fn strict_optional_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Map<String, Value>>, D::Error> {
    #[derive(Deserialize)]
    struct Strict(#[serde(deserialize_with = "crate::json::strict_map")] Map<String, Value>);
    Ok(Option::<Strict>::deserialize(d)?.map(|s| s.0))
}

/// The subject of a request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubjectRef {
    /// Cedar entity type; `Subject` when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Entity id, e.g. `agt-state-hub-bridge` or `iam:agt-state-hub-bridge`.
    pub id: String,
}

/// The resource of a request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// Cedar entity type, e.g. `Actor`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Entity id.
    pub id: String,
}

/// What AuthZEN `properties` may do to the entities the registry holds, for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PropertiesMode {
    /// Add attributes a stored entity does not have, and describe entities the store does not
    /// hold, but never replace a stored attribute; an actor of a registry snapshot is never
    /// made to exist by properties.
    #[default]
    Extend,
    /// Replace stored attributes with the request's (the caller is trusted with the facts).
    Override,
    /// Disregard properties; decide on the loaded entities alone.
    Ignore,
}

/// Allow or deny. There is no third answer: anything that is not an allow is a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request must not proceed.
    Deny,
}

impl Decision {
    /// `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// `decision:` followed by 16 lowercase hex digits from a CSPRNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId(u64);

impl DecisionId {
    /// A fresh, unpredictable id (ChaCha-based thread-local CSPRNG seeded from the OS).
    pub fn generate() -> Self {
        Self(rand::rng().random())
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

impl DecisionId {
    /// `decision:` and 16 lowercase hex digits, written without the formatting machinery (every
    /// answer and record carries one).
    fn encode(self) -> Encoded {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"decision:0000000000000000";
        for (i, slot) in out.iter_mut().skip(9).enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) & 0xf;
            *slot = HEX.get(nibble as usize).copied().unwrap_or(b'0');
        }
        Encoded(out)
    }
}

/// A decision id's text, on the stack: the one encoding `Display` and `Serialize` both write.
struct Encoded([u8; 25]);

impl Encoded {
    fn as_str(&self) -> &str {
        // Always ASCII (a fixed prefix and hex digits); the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or("decision:invalid")
    }
}

impl Serialize for DecisionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.encode().as_str())
    }
}

/// A policy that failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// The policy id (`@id`).
    pub policy: String,
    /// Cedar's message.
    pub message: String,
}

/// The answer to one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Allow or deny.
    pub decision: Decision,
    /// Unique id of this decision.
    pub id: DecisionId,
    /// Reason codes; empty on allow.
    pub reasons: Vec<String>,
    /// Policy ids that determined the decision (or failed to evaluate).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate.
    pub errors: Vec<PolicyError>,
}

impl Outcome {
    /// A deny that no policy made (an item that could not be evaluated, a request no route
    /// matches): `reason` and a fresh decision id.
    pub fn deny(reason: &str) -> Self {
        Self {
            decision: Decision::Deny,
            id: DecisionId::generate(),
            reasons: vec![reason.to_owned()],
            policies: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// How a second answer to the same request differs from the first — a candidate's from the
/// recorded one (`flex-auth replay`), a shadow's from the live one (`serve --shadow-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Allowed before, denied now.
    AllowToDeny,
    /// Denied before, allowed now.
    DenyToAllow,
    /// Denied both times, for a different set of reasons.
    ReasonsChanged,
}

impl Change {
    /// Every change, in label order.
    pub const ALL: [Self; 3] = [Self::AllowToDeny, Self::DenyToAllow, Self::ReasonsChanged];

    /// Stable name (report keys, metric label values).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowToDeny => "allow_to_deny",
            Self::DenyToAllow => "deny_to_allow",
            Self::ReasonsChanged => "reasons_changed",
        }
    }

    /// The change from `before` to `after`; `None` when they agree (the same decision and, for a
    /// deny, the same reasons in any order). Which policies determined an answer is not compared.
    pub fn between(
        before: Decision,
        before_reasons: &[String],
        after: Decision,
        after_reasons: &[String],
    ) -> Option<Self> {
        let same_set = |a: &[String], b: &[String]| {
            a.len() == b.len() && a.iter().all(|r| b.contains(r)) && b.iter().all(|r| a.contains(r))
        };
        match (before, after) {
            (Decision::Allow, Decision::Deny) => Some(Self::AllowToDeny),
            (Decision::Deny, Decision::Allow) => Some(Self::DenyToAllow),
            (Decision::Deny, Decision::Deny) if !same_set(before_reasons, after_reasons) => {
                Some(Self::ReasonsChanged)
            }
            _ => None,
        }
    }
}

/// A request the engine cannot evaluate: the caller's input is wrong (an HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// The request field at fault, e.g. `resource.type`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RequestError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A loaded policy package and registry, ready to decide. Immutable.
#[derive(Debug)]
pub struct Engine {
    /// Shared with the engine a pushed registry replaces this one with: the package in force is
    /// the one a new registry is validated and compiled against, never a re-read of the disk.
    policy: std::sync::Arc<PolicyPackage>,
    registry: Registry,
    authorizer: Authorizer,
    /// Entity type names known at load time, so the hot path does not run the Cedar parser.
    types: HashMap<String, EntityTypeName>,
    /// Action uids declared in the schema, likewise.
    actions: HashMap<String, EntityUid>,
    default_subject_type: EntityTypeName,
    action_type: EntityTypeName,
    /// Entity uids the policies name literally (`Team::"ops"`): seeds of every slice.
    literals: Vec<EntityUid>,
    /// Slices already built, for requests whose context names no entity.
    slices: SliceCache,
    /// The revision of the bundle the package and registry came from, when they did.
    bundle_revision: Option<String>,
}

impl Engine {
    /// Build an engine; the registry must have been loaded with the package's schema.
    pub fn new(policy: PolicyPackage, registry: Registry) -> Result<Self, RequestError> {
        Self::with_shared_policy(std::sync::Arc::new(policy), registry)
    }

    /// The package of `self` with another registry (loaded with that package's schema).
    pub fn with_registry(&self, registry: Registry) -> Result<Self, RequestError> {
        Self::with_shared_policy(std::sync::Arc::clone(&self.policy), registry)
    }

    fn with_shared_policy(
        policy: std::sync::Arc<PolicyPackage>,
        registry: Registry,
    ) -> Result<Self, RequestError> {
        let parse = |name: &str| {
            EntityTypeName::from_str(name)
                .map_err(|e| RequestError::new("type", format!("`{name}`: {e}")))
        };
        let default_subject_type = parse(SUBJECT_TYPE)?;
        let action_type = parse(ACTION_TYPE)?;
        let mut types: HashMap<String, EntityTypeName> = HashMap::new();
        for name in [&default_subject_type, &action_type] {
            types.insert(name.to_string(), name.clone());
        }
        let mut actions = HashMap::new();
        if let Some(schema) = policy.schema() {
            for t in schema.entity_types() {
                types.insert(t.to_string(), t.clone());
            }
            for a in schema.actions() {
                actions.insert(a.id().unescaped().to_owned(), a.clone());
            }
        }
        for t in registry.entity_types() {
            types.entry(t.to_string()).or_insert(t);
        }
        let mut literals: Vec<EntityUid> = policy
            .policies()
            .policies()
            .flat_map(cedar_policy::Policy::entity_literals)
            .collect();
        literals.sort_unstable_by_key(ToString::to_string);
        literals.dedup();
        Ok(Self {
            policy,
            registry,
            authorizer: Authorizer::new(),
            types,
            actions,
            default_subject_type,
            action_type,
            literals,
            slices: SliceCache::default(),
            bundle_revision: None,
        })
    }

    /// The policy package.
    pub fn policy(&self) -> &PolicyPackage {
        &self.policy
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The same engine, stamped with the revision of the bundle it was built from.
    pub fn with_bundle_revision(mut self, revision: &str) -> Self {
        self.bundle_revision = Some(revision.to_owned());
        self
    }

    /// The revision of the bundle this engine was built from, if it was.
    pub fn bundle_revision(&self) -> Option<&str> {
        self.bundle_revision.as_deref()
    }

    /// The slice cache's hits and misses since this engine was built (a reload starts at 0).
    pub fn slice_cache_stats(&self) -> (u64, u64) {
        self.slices.stats()
    }

    fn entity_type(&self, field: &'static str, name: &str) -> Result<EntityTypeName, RequestError> {
        if let Some(t) = self.types.get(name) {
            return Ok(t.clone());
        }
        EntityTypeName::from_str(name).map_err(|_| {
            RequestError::new(
                field,
                format!("`{name}` is not a valid Cedar entity type name"),
            )
        })
    }

    /// The action's uid: one the schema declares (looked up once), or, without a schema, any.
    fn action_uid(&self, name: &str) -> Result<EntityUid, RequestError> {
        if name.is_empty() {
            return Err(RequestError::new("action", "must not be empty"));
        }
        if let Some(uid) = self.actions.get(name) {
            return Ok(uid.clone());
        }
        if self.policy.schema().is_some() {
            let mut declared: Vec<&str> = self.actions.keys().map(String::as_str).collect();
            declared.sort_unstable();
            return Err(RequestError::new(
                "action",
                format!(
                    "`{name}` is not an action the policy schema declares (declared: {})",
                    declared.join(", ")
                ),
            ));
        }
        Ok(EntityUid::from_type_name_and_id(
            self.action_type.clone(),
            EntityId::new(name),
        ))
    }

    /// Decide one request (borrowed: callers keep it to log it). `Err` only for requests that
    /// are malformed for this package (bad type names, a context or entity types the schema
    /// rejects); every evaluation outcome is `Ok`.
    ///
    /// A raw Cedar entities file is evaluated as Cedar holds it; a snapshot's actors are kept
    /// compact, and the request is evaluated against the slice of them it reaches
    /// (`Engine::slice`).
    pub fn decide(&self, request: &CheckRequest) -> Result<Outcome, RequestError> {
        let cedar_request = self.cedar_request(request)?;
        if let Some(store) = self.registry.whole_store() {
            return Ok(self.evaluate(&cedar_request, store));
        }
        // The slice depends on the three uids alone unless the context names an entity.
        let context_refs = request.context.as_ref().is_some_and(|context| {
            let mut refs = Vec::new();
            for value in context.values() {
                cedar_json::entity_refs(value, &mut refs);
            }
            !refs.is_empty()
        });
        let key = match (
            cedar_request.principal(),
            cedar_request.action(),
            cedar_request.resource(),
        ) {
            (Some(p), Some(a), Some(r)) if !context_refs => Some((p.clone(), a.clone(), r.clone())),
            _ => None,
        };
        if let Some(slice) = key.as_ref().and_then(|k| self.slices.get(k)) {
            return Ok(self.evaluate(&cedar_request, &slice));
        }
        let entities =
            Arc::new(self.slice(&cedar_request, request, &[], PropertiesMode::Ignore)?);
        if let Some(key) = key {
            self.slices.insert(key, Arc::clone(&entities));
        }
        Ok(self.evaluate(&cedar_request, &entities))
    }

    /// Decide one request in which the subject and/or the resource carry attributes of their own
    /// (AuthZEN `properties`), applied as `mode` says (see [`PropertiesMode`]): for this request
    /// they are merged with the attributes the loaded registry or entities hold for that entity
    /// (an entity the store does not hold exists with just these, unless the registry is the
    /// only source of its type). The loaded entities are not touched: the request is evaluated against
    /// the slice of them it can reach (see `Engine::slice`) with the merged entities in it.
    pub fn decide_with_properties(
        &self,
        request: &CheckRequest,
        subject_properties: Option<&Map<String, Value>>,
        resource_properties: Option<&Map<String, Value>>,
        mode: PropertiesMode,
    ) -> Result<Outcome, RequestError> {
        if mode == PropertiesMode::Ignore
            || (subject_properties.is_none() && resource_properties.is_none())
        {
            return self.decide(request);
        }
        let cedar_request = self.cedar_request(request)?;
        let mut overrides = Vec::new();
        if let (Some(props), Some(uid)) = (subject_properties, cedar_request.principal()) {
            overrides.push(("subject.properties", uid.clone(), props));
        }
        if let (Some(props), Some(uid)) = (resource_properties, cedar_request.resource()) {
            overrides.push(("resource.properties", uid.clone(), props));
        }
        let entities = self.slice(&cedar_request, request, &overrides, mode)?;
        Ok(self.evaluate(&cedar_request, &entities))
    }

    /// The entities a request can reach, with `overrides` merged in: the overridden entities,
    /// the request's principal, action and resource, every entity the policies name literally,
    /// the context's entity references, and — transitively — the parents and attribute
    /// references of all of these. Cedar reads entities only along those paths, so evaluating
    /// against the slice gives the same answer as evaluating against the whole store with the
    /// overrides applied (`tests/slice_equivalence.rs` checks it), at a cost that depends on the
    /// slice, not on the registry's size.
    fn slice(
        &self,
        cedar_request: &Request,
        request: &CheckRequest,
        overrides: &[(&'static str, EntityUid, &Map<String, Value>)],
        mode: PropertiesMode,
    ) -> Result<Entities, RequestError> {
        let schema = self.policy.schema();
        let mut seen = Seen::default();
        let mut queue: Vec<EntityUid> = Vec::with_capacity(8 + self.literals.len());
        queue.extend(
            [
                cedar_request.principal(),
                cedar_request.action(),
                cedar_request.resource(),
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        queue.extend(self.literals.iter().cloned());
        let mut slice: Vec<Entity> = Vec::new();
        for (field, uid, props) in overrides {
            let mut ignored = Vec::new();
            let stored = self
                .registry
                .entity(uid, &mut ignored)
                .transpose()
                .map_err(|e| RequestError::new("registry", e))?;
            if stored.is_none()
                && mode == PropertiesMode::Extend
                && self.registry.is_authoritative_for(uid.type_name())
            {
                // The registry is the only source of these entities: properties cannot make one
                // exist (an unknown actor stays unknown, whatever limits the request claims).
                continue;
            }
            let mut json = match stored {
                Some(entity) => entity
                    .to_json_value()
                    .map_err(|e| RequestError::new(field, e.to_string()))?,
                None => serde_json::json!({
                    "uid": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()},
                    "attrs": {},
                    "parents": [],
                }),
            };
            if let Some(attrs) = json.get_mut("attrs").and_then(Value::as_object_mut) {
                for (name, value) in *props {
                    match mode {
                        PropertiesMode::Override => {
                            attrs.insert(name.clone(), value.clone());
                        }
                        // Never replace what the registry says about an entity.
                        PropertiesMode::Extend | PropertiesMode::Ignore => {
                            attrs.entry(name.clone()).or_insert_with(|| value.clone());
                        }
                    }
                }
            }
            cedar_json::entity_refs(&json, &mut queue);
            let entity = Entity::from_json_value(json, schema)
                .map_err(|e| RequestError::new(field, error_chain(&e)))?;
            seen.insert(uid);
            slice.push(entity);
        }
        if let Some(context) = &request.context {
            for value in context.values() {
                cedar_json::entity_refs(value, &mut queue);
            }
        }
        // Bounded: every uid is expanded at most once, and only uids the store holds are.
        while let Some(uid) = queue.pop() {
            if !seen.insert(&uid) {
                continue;
            }
            match self.registry.entity(&uid, &mut queue) {
                Some(Ok(entity)) => slice.push(entity),
                Some(Err(e)) => return Err(RequestError::new("registry", e)),
                None => {}
            }
        }
        // Everything taken from the store was validated against the schema when it was loaded
        // (action entities included), and the merged entities just now; the slice needs only
        // its transitive closure, which is small.
        Entities::from_entities(slice, None)
            .map_err(|e| RequestError::new("request", error_chain(&e)))
    }

    /// The Cedar request for a check, validated against the schema when there is one.
    fn cedar_request(&self, request: &CheckRequest) -> Result<Request, RequestError> {
        let uids = || -> Result<(EntityUid, EntityUid, EntityUid), RequestError> {
            let principal_type = match &request.subject.entity_type {
                Some(t) => self.entity_type("subject.type", t)?,
                None => self.default_subject_type.clone(),
            };
            let principal = EntityUid::from_type_name_and_id(
                principal_type,
                EntityId::new(&request.subject.id),
            );
            let resource_type = self.entity_type("resource.type", &request.resource.entity_type)?;
            let resource = EntityUid::from_type_name_and_id(
                resource_type,
                EntityId::new(&request.resource.id),
            );
            Ok((principal, self.action_uid(&request.action)?, resource))
        };
        let (principal, action, resource) = uids()?;
        let schema = self.policy.schema();
        let empty = Map::new();
        let context = request.context.as_ref().unwrap_or(&empty);
        // Fast path: plain JSON converted directly, used only when the schema accepts it as is.
        // The uids are moved into it and built again on the rare way out (no clones kept).
        let (principal, action, resource) = match cedar_json::context(context) {
            Some(fast) => match Request::new(principal, action, resource, fast, schema) {
                Ok(cedar_request) => return Ok(cedar_request),
                Err(_) => uids()?,
            },
            None => (principal, action, resource),
        };
        // Cedar's reader: escapes, schema-directed conversions, and the precise error messages.
        let context =
            Context::from_json_value(Value::Object(context.clone()), schema.map(|s| (s, &action)))
                .map_err(|e| RequestError::new("context", e.to_string()))?;
        Request::new(principal, action, resource, context, schema).map_err(request_validation_error)
    }

    fn evaluate(&self, request: &Request, entities: &Entities) -> Outcome {
        // Only the policies whose scope can match the action (`policy::index`): same answer.
        let policies = self.policy.policies_for(request.action());
        let response = self.authorizer.is_authorized(request, policies, entities);
        self.outcome(response)
    }

    fn outcome(&self, response: cedar_policy::Response) -> Outcome {
        let diagnostics = response.diagnostics();
        let mut determining: Vec<&PolicyId> = diagnostics.reason().collect();
        determining.sort_unstable_by(|a, b| AsRef::<str>::as_ref(*a).cmp(AsRef::<str>::as_ref(*b)));
        let mut errors: Vec<PolicyError> = diagnostics
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(err) => PolicyError {
                    policy: err.policy_id().to_string(),
                    message: err.inner().to_string(),
                },
            })
            .collect();
        errors.sort_unstable_by(|a, b| a.policy.cmp(&b.policy));

        let id = DecisionId::generate();
        if errors.is_empty() && response.decision() == cedar_policy::Decision::Allow {
            return Outcome {
                decision: Decision::Allow,
                id,
                reasons: Vec::new(),
                policies: determining.iter().map(|p| p.to_string()).collect(),
                errors,
            };
        }

        let mut reasons: Vec<String> = Vec::new();
        let mut policies: Vec<String> = errors.iter().map(|e| e.policy.clone()).collect();
        if !errors.is_empty() {
            reasons.push(REASON_POLICY_ERROR.to_owned());
        }
        // On an allow overridden by an error the determining policies are permits: not reasons.
        if response.decision() == cedar_policy::Decision::Deny {
            for policy in determining {
                let reason = self.policy.reason_of(policy).unwrap_or(REASON_FORBIDDEN);
                if !reasons.iter().any(|r| r == reason) {
                    reasons.push(reason.to_owned());
                }
                policies.push(policy.to_string());
            }
        }
        if reasons.is_empty() {
            reasons.push(REASON_NO_MATCHING_PERMIT.to_owned());
        }
        Outcome {
            decision: Decision::Deny,
            id,
            reasons,
            policies,
            errors,
        }
    }
}

/// The uids a slice has expanded: a short list scanned in place while the slice is small (the
/// usual request reaches a handful of entities), a hash set once it is not.
#[derive(Default)]
enum Seen {
    #[default]
    Empty,
    Few(Vec<EntityUid>),
    Many(HashSet<EntityUid>),
}

impl Seen {
    const FEW: usize = 16;

    /// `true` when `uid` was not seen before.
    fn insert(&mut self, uid: &EntityUid) -> bool {
        match self {
            Self::Empty => {
                *self = Self::Few(vec![uid.clone()]);
                true
            }
            Self::Few(uids) => {
                if uids.contains(uid) {
                    return false;
                }
                if uids.len() < Self::FEW {
                    uids.push(uid.clone());
                } else {
                    let mut set: HashSet<EntityUid> = uids.drain(..).collect();
                    set.insert(uid.clone());
                    *self = Self::Many(set);
                }
                true
            }
            Self::Many(set) => set.insert(uid.clone()),
        }
    }
}

/// An error with its causes, `outer: inner: innermost` (Cedar's messages are terse at the top).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    // Bounded: error chains are short, and a cycle would be a bug elsewhere.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn request_validation_error(e: RequestValidationError) -> RequestError {
    let field =
        match &e {
            RequestValidationError::UndeclaredAction(_)
            | RequestValidationError::ExternalAction(_) => "action",
            RequestValidationError::UndeclaredPrincipalType(_)
            | RequestValidationError::InvalidPrincipalType(_) => "subject.type",
            RequestValidationError::UndeclaredResourceType(_)
            | RequestValidationError::InvalidResourceType(_) => "resource.type",
            RequestValidationError::InvalidContext(_)
            | RequestValidationError::TypeOfContext(_) => "context",
            _ => "request",
        };
    RequestError::new(field, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_serialize_as_they_display() {
        for raw in [0, 1, 0xf, 0x0123_4567_89ab_cdef, u64::MAX, 1 << 63] {
            let id = DecisionId(raw);
            assert_eq!(
                serde_json::to_string(&id).unwrap(),
                format!("\"{id}\""),
                "{raw:x}"
            );
            assert_eq!(id.to_string(), format!("decision:{raw:016x}"), "{raw:x}");
        }
        let id = DecisionId::generate();
        assert_eq!(serde_json::to_value(id).unwrap(), id.to_string());
    }

    #[test]
    fn decision_ids_have_the_documented_shape_and_differ() {
        let a = DecisionId::generate().to_string();
        let b = DecisionId::generate().to_string();
        assert_ne!(a, b);
        let hex = a.strip_prefix("decision:").unwrap();
        assert_eq!(hex.len(), 16);
        assert!(hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    #[test]
    fn request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CheckRequest>(
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"Actor","id":"b"},"ressource":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ressource"));
    }
}
