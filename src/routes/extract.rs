//! A matched route's values, read from the request: path parameters, query, headers, claims,
//! the JSON body or a constant, converted as the route says.

use serde_json::{Map, Value};

use super::{Check, Conversion, InputError, Inputs, Source, ValueSpec};

impl Check {
    /// The resource id and context for one request.
    pub fn extract(
        &self,
        params: &[(String, String)],
        inputs: &Inputs<'_>,
    ) -> Result<(String, Map<String, Value>), InputError> {
        let id = match resolve(&self.resource_id, params, inputs, "resource.id")? {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(input_error(
                    "resource.id",
                    &self.resource_id,
                    "must be a non-empty string",
                ))
            }
            None => return Err(input_error("resource.id", &self.resource_id, "is absent")),
        };
        let mut context = Map::new();
        for (name, spec) in &self.context {
            // An absent context value is left out; the policy (and its schema) decide whether
            // that is acceptable.
            if let Some(value) = resolve(spec, params, inputs, &format!("context.{name}"))? {
                context.insert(name.clone(), value);
            }
        }
        Ok((id, context))
    }
}

fn input_error(field: &str, spec: &ValueSpec, problem: &str) -> InputError {
    InputError {
        field: field.to_owned(),
        source_desc: spec.source.describe(),
        problem: problem.to_owned(),
    }
}

/// Whether a reader that ignores case could take query name `key` for `name`: ASCII case, and
/// Unicode case mappings for non-ASCII names (`K` KELVIN SIGN upper-cases to `K`, `ſ` to `S`).
fn same_query_name(key: &str, name: &str) -> bool {
    key.eq_ignore_ascii_case(name)
        || (!key.is_ascii()
            && (key.to_uppercase() == name.to_uppercase()
                || key.to_lowercase() == name.to_lowercase()))
}

fn resolve(
    spec: &ValueSpec,
    params: &[(String, String)],
    inputs: &Inputs<'_>,
    field: &str,
) -> Result<Option<Value>, InputError> {
    let raw: Option<Value> = match &spec.source {
        Source::Path(name) => params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Value::String(v.clone())),
        // A name given twice is refused, not resolved to one of its values: the upstream may
        // read the other one (parameter pollution), and the decision would be about a request
        // it does not serve. Some frameworks read query names regardless of case, so `ROLE`
        // counts as `role` — and is refused on its own too, since either reading is possible.
        Source::Query(name) => {
            let mut values = inputs
                .query
                .into_iter()
                .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
                .filter(|(k, _)| same_query_name(k, name));
            match (values.next(), values.next()) {
                (Some(_), Some(_)) => {
                    return Err(input_error(field, spec, "is given more than once"))
                }
                (Some((key, _)), None) if key != name.as_str() => {
                    return Err(input_error(
                        field,
                        spec,
                        &format!(
                            "is spelled `{}`: the route reads `{name}` exactly",
                            key.escape_debug()
                        ),
                    ))
                }
                (value, _) => value.map(|(_, v)| Value::String(v.into_owned())),
            }
        }
        Source::Header(name) => {
            let mut values = inputs.headers.get_all(name.as_str()).iter();
            match (values.next(), values.next()) {
                (Some(_), Some(_)) => {
                    return Err(input_error(field, spec, "is given more than once"))
                }
                (Some(v), None) => Some(Value::String(
                    v.to_str()
                        .map_err(|_| input_error(field, spec, "is not ASCII text"))?
                        .to_owned(),
                )),
                (None, _) => None,
            }
        }
        Source::Claim(name) => inputs.claims.get(name).cloned(),
        Source::Body(pointer) => inputs.body.and_then(|b| b.pointer(pointer)).cloned(),
        Source::Value(v) => Some(v.clone()),
    };
    let Some(raw) = raw else { return Ok(None) };
    let converted = match (spec.convert, raw) {
        (None, v) => v,
        (Some(Conversion::String), Value::String(s)) => Value::String(s),
        (Some(Conversion::String), v @ (Value::Number(_) | Value::Bool(_))) => {
            Value::String(v.to_string())
        }
        (Some(Conversion::Long), Value::String(s)) => Value::from(
            s.trim()
                .parse::<i64>()
                .map_err(|_| input_error(field, spec, "is not an integer"))?,
        ),
        (Some(Conversion::Long), Value::Number(n)) if n.is_i64() => Value::Number(n),
        (Some(Conversion::Bool), Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(input_error(field, spec, "is not `true` or `false`")),
        },
        (Some(Conversion::Bool), Value::Bool(b)) => Value::Bool(b),
        (Some(c), _) => {
            return Err(input_error(
                field,
                spec,
                &format!("cannot be converted to {c:?}").to_lowercase(),
            ))
        }
    };
    Ok(Some(converted))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::FILE;
    use super::super::Routes;
    use super::*;

    #[test]
    fn values_are_extracted_and_converted() {
        let routes = Routes::parse(FILE).unwrap();
        let (route, params) = routes
            .find(&http::Method::GET, "/v1/accounts/acc-1/roles/admin")
            .unwrap()
            .unwrap();
        let check = route.check.as_ref().unwrap();
        let headers = http::HeaderMap::new();
        let claims = Map::new();
        let inputs = Inputs {
            query: Some("limit=5&x=1"),
            headers: &headers,
            claims: &claims,
            body: None,
        };
        let (id, context) = check.extract(&params, &inputs).unwrap();
        assert_eq!(id, "acc-1");
        assert_eq!(context["limit"], Value::from(5));
        assert_eq!(context["role"], Value::from("admin"));
        let bad = Inputs {
            query: Some("limit=five"),
            ..inputs
        };
        let e = check.extract(&params, &bad).unwrap_err();
        assert_eq!(e.field, "context.limit");
        assert!(e.to_string().contains("query parameter `limit`"), "{e}");
    }

    #[test]
    fn a_missing_resource_id_is_an_input_error() {
        let routes = Routes::parse(FILE).unwrap();
        let (route, params) = routes
            .find(&http::Method::POST, "/v1/mint-aws-creds")
            .unwrap()
            .unwrap();
        let headers = http::HeaderMap::new();
        let claims = Map::new();
        let body = serde_json::json!({"ttl_hours": 1});
        let inputs = Inputs {
            query: None,
            headers: &headers,
            claims: &claims,
            body: Some(&body),
        };
        let e = route
            .check
            .as_ref()
            .unwrap()
            .extract(&params, &inputs)
            .unwrap_err();
        assert_eq!(e.field, "resource.id");
    }

    #[test]
    fn a_query_parameter_or_header_given_twice_is_refused() {
        let routes = Routes::parse(
            "routes:\n  - {method: GET, path: /a, action: r, resource: {type: T, id: {query: id}}, \
             context: {tenant: {header: x-tenant}}}",
        )
        .unwrap();
        let (route, params) = routes.find(&http::Method::GET, "/a").unwrap().unwrap();
        let check = route.check.as_ref().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", "t1".parse().unwrap());
        let claims = Map::new();
        let inputs = |query| Inputs {
            query: Some(query),
            headers: &headers,
            claims: &claims,
            body: None,
        };
        assert_eq!(check.extract(&params, &inputs("id=a")).unwrap().0, "a");
        // Twice, also when one spelling is percent-encoded: neither value is picked.
        for query in [
            "id=a&id=b",
            "id=a&%69d=b",
            "id=a&id=a",
            "id=a&ID=b",
            "iD=b&id=a",
        ] {
            let e = check.extract(&params, &inputs(query)).unwrap_err();
            assert_eq!(e.field, "resource.id", "{query}");
            assert!(e.to_string().contains("more than once"), "{e}");
        }
        // Another spelling alone: a case-insensitive reader would take it, an exact one not.
        let e = check.extract(&params, &inputs("Id=b")).unwrap_err();
        assert!(e.to_string().contains("is spelled `Id`"), "{e}");
        let mut twice = headers.clone();
        twice.append("x-tenant", "t2".parse().unwrap());
        let e = check
            .extract(
                &params,
                &Inputs {
                    headers: &twice,
                    ..inputs("id=a")
                },
            )
            .unwrap_err();
        assert_eq!(e.field, "context.tenant");
    }

    #[test]
    fn query_names_match_as_a_case_insensitive_reader_would() {
        for (key, name) in [
            ("role", "role"),
            ("ROLE", "role"),
            ("ro\u{17f}e", "rose"),
            ("\u{212a}ey", "key"),
        ] {
            assert!(super::same_query_name(key, name), "{key} ~ {name}");
        }
        for (key, name) in [
            ("roles", "role"),
            ("rol", "role"),
            ("r\u{f6}le", "role"),
            ("", "role"),
        ] {
            assert!(!super::same_query_name(key, name), "{key} !~ {name}");
        }
    }
}
