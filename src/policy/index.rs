//! The policies that can apply to a request's action, computed once when a package loads, so
//! Cedar is handed only those.
//!
//! Cedar's authorizer evaluates every policy of the set it is given, and a policy's scope is the
//! first conjunct of its condition: a policy whose action scope cannot match the request's action
//! evaluates to `false` there, short-circuited, without an error and without reaching its body.
//! Leaving it out therefore changes neither the decision, nor the determining policies, nor the
//! errors (`tests/policy_index.rs` checks it against the whole set on generated packages); it
//! only saves Cedar the work of building and evaluating it, which grows with the package.
//!
//! What "cannot match" means here is deliberately narrow:
//! - `action == A` cannot match any action but `A`;
//! - `action in [A, B]` cannot match an action that is none of them and none of whose ancestors
//!   is one of them, where the ancestors are the action groups the **schema** declares (with a
//!   schema, the action entities Cedar evaluates against are the schema's). Without a schema an
//!   entities file may give actions parents of its own, so an `in` scope is kept for every action;
//! - an unconstrained action scope matches every action.
//!
//! A package with templates is not indexed (linked policies are kept whole).

use std::collections::{HashMap, HashSet};

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicySet, Schema};

/// Action → the policies that can apply to it (`None`: all of them) for every action the schema
/// or a policy scope names. Actions it does not list are evaluated against `unlisted`.
#[derive(Debug, Default)]
pub(crate) struct ActionIndex {
    by_action: HashMap<EntityUid, Option<PolicySet>>,
    /// The policies that can apply to an action no policy or schema names (no schema: any name
    /// may be asked): every policy without an `action ==` scope. `None` when that is all of them.
    unlisted: Option<PolicySet>,
}

impl ActionIndex {
    /// Index `policies` by the actions of `schema` and of the policies' own scopes.
    pub(crate) fn build(policies: &PolicySet, schema: Option<&Schema>) -> Self {
        if policies.templates().next().is_some() {
            return Self::default();
        }
        let all: Vec<&Policy> = policies.policies().collect();
        // Every action a request can name and a policy scope can tell apart.
        let mut actions: Vec<EntityUid> = Vec::new();
        if let Some(schema) = schema {
            actions.extend(schema.actions().cloned());
        }
        for policy in &all {
            match policy.action_constraint() {
                ActionConstraint::Any => {}
                ActionConstraint::Eq(uid) => actions.push(uid),
                ActionConstraint::In(uids) => actions.extend(uids),
            }
        }
        let mut seen = HashSet::new();
        actions.retain(|uid| seen.insert(uid.clone()));
        let groups = schema.and_then(|s| s.action_entities().ok());

        let mut by_action = HashMap::new();
        for action in actions {
            let ancestors: Option<Vec<&EntityUid>> = groups.as_ref().map(|entities| {
                entities
                    .ancestors(&action)
                    .map(Iterator::collect)
                    .unwrap_or_default()
            });
            let applies = |policy: &Policy| match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == action,
                ActionConstraint::In(uids) => match &ancestors {
                    Some(ancestors) => uids
                        .iter()
                        .any(|uid| *uid == action || ancestors.contains(&uid)),
                    None => true,
                },
            };
            let set = subset(&all, applies);
            by_action.insert(action, set);
        }
        let unlisted = subset(&all, |policy| {
            !matches!(policy.action_constraint(), ActionConstraint::Eq(_))
        });
        Self {
            by_action,
            unlisted,
        }
    }

    /// The policies to hand Cedar for a request naming `action`; `whole` is the package's set.
    pub(crate) fn for_action<'a>(
        &'a self,
        action: Option<&EntityUid>,
        whole: &'a PolicySet,
    ) -> &'a PolicySet {
        let Some(action) = action else {
            return whole;
        };
        let narrowed = match self.by_action.get(action) {
            Some(listed) => listed.as_ref(),
            None => self.unlisted.as_ref(),
        };
        narrowed.unwrap_or(whole)
    }

    /// How many actions have a set smaller than the whole package.
    pub(crate) fn indexed_actions(&self) -> usize {
        self.by_action.values().filter(|set| set.is_some()).count()
    }
}

/// The policies of `all` that `keep` keeps, when that is not all of them (and all of them when a
/// policy cannot be added again, which a set built from a valid one never refuses).
fn subset(all: &[&Policy], keep: impl Fn(&Policy) -> bool) -> Option<PolicySet> {
    let kept: Vec<&Policy> = all.iter().copied().filter(|p| keep(p)).collect();
    if kept.len() == all.len() {
        return None;
    }
    let mut set = PolicySet::new();
    for policy in kept {
        set.add((*policy).clone()).ok()?;
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn uid(action: &str) -> EntityUid {
        EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap()
    }

    fn ids(set: &PolicySet) -> Vec<String> {
        let mut ids: Vec<String> = set
            .policies()
            .filter_map(|p| p.annotation("id").map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    const POLICIES: &str = r#"
        @id("read") permit (principal, action == Action::"read", resource);
        @id("write") permit (principal, action == Action::"write", resource);
        @id("any") forbid (principal, action, resource) when { context.x };
        @id("group") permit (principal, action in [Action::"edit"], resource);
    "#;

    #[test]
    fn without_a_schema_eq_scopes_are_split_and_in_scopes_kept_everywhere() {
        let policies = PolicySet::from_str(POLICIES).unwrap();
        let index = ActionIndex::build(&policies, None);
        assert_eq!(
            ids(index.for_action(Some(&uid("read")), &policies)),
            ["any", "group", "read"]
        );
        assert_eq!(
            ids(index.for_action(Some(&uid("other")), &policies)),
            ["any", "group"]
        );
        assert_eq!(ids(index.for_action(None, &policies)).len(), 4);
    }

    #[test]
    fn with_a_schema_in_scopes_follow_the_declared_groups() {
        let policies = PolicySet::from_str(POLICIES).unwrap();
        let (schema, _) = Schema::from_cedarschema_str(
            r#"entity User; entity Doc;
               action edit;
               action read, write in [edit] appliesTo { principal: User, resource: Doc };
               action delete appliesTo { principal: User, resource: Doc };"#,
        )
        .unwrap();
        let index = ActionIndex::build(&policies, Some(&schema));
        assert_eq!(
            ids(index.for_action(Some(&uid("read")), &policies)),
            ["any", "group", "read"]
        );
        assert_eq!(
            ids(index.for_action(Some(&uid("delete")), &policies)),
            ["any"]
        );
    }

    #[test]
    fn an_action_every_policy_applies_to_keeps_them_all() {
        // Found by tests/policy_index.rs: `a0` is named by an `==` scope and every policy can
        // apply to it, so it is not narrowed — and must not fall to the set of unnamed actions.
        let policies = PolicySet::from_str(
            r#"@id("p0") permit (principal, action == Action::"a0", resource);
               @id("p1") forbid (principal, action in [Action::"g0"], resource) when { false };"#,
        )
        .unwrap();
        let index = ActionIndex::build(&policies, None);
        assert_eq!(
            ids(index.for_action(Some(&uid("a0")), &policies)),
            ["p0", "p1"]
        );
        assert_eq!(ids(index.for_action(Some(&uid("zz")), &policies)), ["p1"]);
    }

    #[test]
    fn a_package_every_policy_of_which_applies_everywhere_is_not_copied() {
        let policies = PolicySet::from_str(
            r#"@id("a") permit (principal, action, resource);
               @id("b") forbid (principal, action, resource) when { context.x };"#,
        )
        .unwrap();
        let index = ActionIndex::build(&policies, None);
        assert_eq!(index.indexed_actions(), 0);
        assert!(std::ptr::eq(
            index.for_action(Some(&uid("read")), &policies),
            &policies
        ));
    }
}
