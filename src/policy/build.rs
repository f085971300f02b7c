//! Building a package: parsing every source, refusing duplicate ids, validating against the
//! schema, and collecting the annotations the PDP acts on.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::diagnostics::{diagnostic_errors, locate};
use super::discovery::file_label;
use super::{PolicyLoadError, PolicyPackage, RawPackage, SchemaSyntax, Source, SourceError};
use super::{ID_ANNOTATION, REASON_ANNOTATION};

/// Where each policy came from, for error messages.
struct Origin<'a> {
    id: PolicyId,
    source: &'a Source,
}

pub(super) fn build_package(raw: RawPackage) -> Result<PolicyPackage, PolicyLoadError> {
    let mut errors = Vec::new();
    let mut policies = PolicySet::new();
    let mut origins: Vec<Origin<'_>> = Vec::new();
    let mut seen_ids: HashSet<String> = HashSet::new();

    for source in &raw.policy_sources {
        let parsed = match PolicySet::from_str(&source.text) {
            Ok(set) => set,
            Err(e) => {
                errors.extend(diagnostic_errors(source, &e));
                continue;
            }
        };
        if parsed.num_of_templates() > 0 {
            errors.push(SourceError {
                path: source.path.clone(),
                line: None,
                column: None,
                message: "policy templates (`?principal`, `?resource`) are not supported; write static policies".to_owned(),
            });
            continue;
        }
        // Cedar numbers policies `policy0`, `policy1`, … in text order; keep that order.
        let mut in_file: Vec<_> = parsed.policies().collect();
        in_file.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (n, policy) in in_file.into_iter().enumerate() {
            let id = match policy.annotation(ID_ANNOTATION) {
                Some(id) if id.trim().is_empty() => {
                    errors.push(locate(source, "@id(\"", "`@id` must not be empty"));
                    continue;
                }
                Some(id) => id.to_owned(),
                None => format!("{}#{}", file_label(&source.path), n + 1),
            };
            if !seen_ids.insert(id.clone()) {
                errors.push(locate(
                    source,
                    &format!("@id(\"{id}\")"),
                    &format!("duplicate policy id `{id}`"),
                ));
                continue;
            }
            if policy.effect() == Effect::Permit && policy.annotation(REASON_ANNOTATION).is_some() {
                errors.push(locate(
                    source,
                    &format!("@id(\"{id}\")"),
                    &format!(
                        "policy `{id}`: `@reason` belongs on `forbid` policies; a permit never reports a deny reason"
                    ),
                ));
                continue;
            }
            let policy_id = PolicyId::new(&id);
            if let Err(e) = policies.add(policy.new_id(policy_id.clone())) {
                errors.push(SourceError {
                    path: source.path.clone(),
                    line: None,
                    column: None,
                    message: e.to_string(),
                });
                continue;
            }
            origins.push(Origin {
                id: policy_id,
                source,
            });
        }
    }

    let mut warnings = Vec::new();
    let schema = match &raw.schema_source {
        Some((source, syntax)) => match parse_schema(source, *syntax) {
            Ok((schema, schema_warnings)) => {
                warnings.extend(schema_warnings);
                Some(schema)
            }
            Err(e) => {
                errors.extend(e);
                None
            }
        },
        None => None,
    };

    if errors.is_empty() {
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            for e in result.validation_errors() {
                let source = origins.iter().find(|o| &o.id == e.policy_id());
                match source {
                    Some(o) => errors.extend(diagnostic_errors(o.source, e)),
                    None => errors.push(SourceError {
                        path: raw.files.first().cloned().unwrap_or_default(),
                        line: None,
                        column: None,
                        message: e.to_string(),
                    }),
                }
            }
            for w in result.validation_warnings() {
                if let Some(o) = origins.iter().find(|o| &o.id == w.policy_id()) {
                    warnings.extend(diagnostic_errors(o.source, w).iter().map(|e| e.to_string()));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(PolicyLoadError::Invalid(errors));
    }

    let hash = raw.hash();
    let name = raw.manifest.name.clone().unwrap_or(raw.name);
    let index = super::ActionIndex::build(&policies, schema.as_ref());
    let reasons = policies
        .policies()
        .filter_map(|p| {
            p.annotation(REASON_ANNOTATION)
                .map(|reason| (p.id().clone(), Box::from(reason)))
        })
        .collect();
    Ok(PolicyPackage {
        index,
        reasons,
        name,
        version: raw.manifest.version,
        policies,
        schema,
        hash,
        sources: raw.files,
        warnings,
    })
}

fn parse_schema(
    source: &Source,
    syntax: SchemaSyntax,
) -> Result<(Schema, Vec<String>), Vec<SourceError>> {
    match syntax {
        SchemaSyntax::Cedar => match Schema::from_cedarschema_str(&source.text) {
            Ok((schema, warnings)) => {
                let warnings = warnings
                    .map(|w| format!("{}: {w}", source.path.display()))
                    .collect();
                Ok((schema, warnings))
            }
            Err(e) => Err(diagnostic_errors(source, &e)),
        },
        SchemaSyntax::Json => Schema::from_json_str(&source.text)
            .map(|schema| (schema, Vec::new()))
            .map_err(|e| diagnostic_errors(source, &e)),
    }
}
