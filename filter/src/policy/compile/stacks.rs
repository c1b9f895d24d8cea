//! The `stacks` section: names, clusters, regions, health paths. Decides the stack ids
//! (document order) and interns the stacks' regions first; it never looks at rules.

use switchyard_policy_doc::PolicyDoc;

use crate::hash::NameMap;
use crate::policy::check::{valid_name, Ctx};
use crate::policy::compiled::Stack;
use crate::policy::ids::{StackId, MAX_STACKS};

use super::regions::Regions;

/// The compiled stacks and their ids by name.
pub(super) fn stacks(
    ctx: &mut Ctx,
    doc: &PolicyDoc,
    regions: &mut Regions,
) -> (Vec<Stack>, NameMap<String, StackId>) {
    if doc.stacks.is_empty() {
        ctx.err("stacks", "at least one stack is required");
    }
    if doc.stacks.len() > MAX_STACKS {
        ctx.err(
            "stacks",
            format!(
                "at most {MAX_STACKS} stacks are supported, got {}",
                doc.stacks.len()
            ),
        );
    }
    let mut stacks = Vec::with_capacity(doc.stacks.len());
    let mut stack_index = NameMap::default();
    for (i, s) in doc.stacks.iter().enumerate() {
        let path = format!("stacks[{i}]");
        if !valid_name(&s.name) {
            ctx.err(
                format!("{path}.name"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", s.name),
            );
        }
        if stack_index.insert(s.name.clone(), i).is_some() {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate stack '{}'", s.name),
            );
        }
        let cluster = s.cluster.clone().unwrap_or_else(|| s.name.clone());
        if cluster.is_empty() {
            ctx.err(format!("{path}.cluster"), "must not be empty");
        }
        if s.region.is_empty() {
            ctx.err(format!("{path}.region"), "must not be empty");
        }
        let region = regions.intern(&s.region);
        if let Some(hp) = &s.health_path {
            if !hp.starts_with('/') || hp.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                ctx.err(
                    format!("{path}.health_path"),
                    format!("'{hp}' must be a path starting with '/'"),
                );
            }
        }
        stacks.push(Stack {
            name: s.name.clone(),
            cluster,
            region,
            labels: s.labels.clone(),
            weight: s.weight,
            health_path: s.health_path.clone(),
        });
    }
    (stacks, stack_index)
}
