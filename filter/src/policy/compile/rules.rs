//! The `rules` list as a whole: rule ids, evaluation order, the cohort table, and which
//! rules can never match. Decides the order rules are evaluated in; an unreachable rule
//! is a warning, never an error (the policy still means what it says).

use switchyard_policy_doc::PolicyDoc;

use crate::hash::NameSet;
use crate::policy::check::{valid_name, Ctx};
use crate::policy::compiled::{Rule, DEFAULT_RULE_ID};
use crate::policy::condition::Condition;

/// Check every rule id: a valid name, not `default`, not repeated.
pub(super) fn check_ids(ctx: &mut Ctx, doc: &PolicyDoc) {
    let mut seen_ids = NameSet::default();
    for (i, r) in doc.rules.iter().enumerate() {
        if !valid_name(&r.id) {
            ctx.err(
                format!("rules[{i}].id"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", r.id),
            );
        } else if r.id == DEFAULT_RULE_ID {
            ctx.err(
                format!("rules[{i}].id"),
                "'default' is reserved for the default route",
            );
        }
        if !seen_ids.insert(r.id.as_str()) {
            ctx.err(
                format!("rules[{i}].id"),
                format!("duplicate rule id '{}'", r.id),
            );
        }
    }
}

/// Document indexes of the rules in evaluation order: ascending priority, ties in
/// document order.
pub(super) fn order(doc: &PolicyDoc) -> Vec<usize> {
    let mut order: Vec<usize> = (0..doc.rules.len()).collect();
    order.sort_by_key(|&i| doc.rules[i].priority); // stable: ties keep document order
    order
}

/// Every cohort named by some rule, sorted (no sort call: every `sort` instance costs the
/// module kilobytes), so a claim value is found by binary search.
pub(super) fn cohorts(doc: &PolicyDoc) -> Vec<String> {
    let mut cohorts: Vec<String> = Vec::new();
    for co in doc.rules.iter().flat_map(|r| &r.matches.cohorts) {
        insert_sorted(&mut cohorts, co);
    }
    cohorts
}

/// Insert into a sorted list of names unless present.
fn insert_sorted(list: &mut Vec<String>, name: &str) {
    if let Err(i) = list.binary_search_by(|x| x.as_str().cmp(name)) {
        list.insert(i, name.to_string());
    }
}

/// Warn about every rule (given with its document index, in evaluation order; the
/// default rule has index `usize::MAX`) that an earlier rule's condition covers.
pub(super) fn warn_unreachable(ctx: &mut Ctx, rules: &[(usize, Rule)]) {
    for (later_pos, (doc_i, later)) in rules.iter().enumerate() {
        if *doc_i == usize::MAX {
            continue;
        }
        if let Some((_, earlier)) = rules[..later_pos]
            .iter()
            .find(|(_, e)| subsumes(&e.cond, &later.cond))
        {
            ctx.warn(
                format!("rules[{doc_i}]"),
                format!("rule '{}' is unreachable: rule '{}' is evaluated first and matches everything it matches", later.id, earlier.id),
            );
        }
    }
}

/// Whether every request `b` matches is also matched by `a`.
fn subsumes(a: &Condition, b: &Condition) -> bool {
    fn list<T: PartialEq>(a: &[T], b: &[T]) -> bool {
        a.is_empty() || (!b.is_empty() && b.iter().all(|x| a.contains(x)))
    }
    fn prefixes(a: &[String], b: &[String]) -> bool {
        a.is_empty()
            || (!b.is_empty()
                && b.iter()
                    .all(|x| a.iter().any(|p| x.starts_with(p.as_str()))))
    }
    let time = a.time.is_none();
    let percent = match (a.percent, b.percent) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((af, at)), Some((bf, bt))) => af <= bf && bt <= at,
    };
    list(&a.regions, &b.regions)
        && list(&a.countries, &b.countries)
        && list(&a.channels, &b.channels)
        && list(&a.cohorts, &b.cohorts)
        && list(&a.methods, &b.methods)
        && prefixes(&a.path_prefixes, &b.path_prefixes)
        && time
        && percent
}
