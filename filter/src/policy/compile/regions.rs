//! Region ids. Regions are not declared on their own: they are interned, in document
//! order, from the stacks and the geo tables; rule matches and residency lists may only
//! name regions interned that way.

use std::collections::HashMap;

use crate::policy::ids::{RegionId, StackId};

/// Region names in id order, with a map for lookups (a policy may have thousands of
/// CIDR entries, each naming a region).
#[derive(Debug, Default)]
pub(super) struct Regions {
    names: Vec<String>,
    // `StackId` (usize) values, the map type `stack_index` already instantiates.
    ids: HashMap<String, StackId>,
}

impl Regions {
    /// The id of a region, interning it on first sight.
    pub fn intern(&mut self, name: &str) -> RegionId {
        if let Some(&i) = self.ids.get(name) {
            return i as RegionId;
        }
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), self.names.len() - 1);
        (self.names.len() - 1) as RegionId
    }

    /// The id of an already interned region.
    pub fn get(&self, name: &str) -> Option<RegionId> {
        self.ids.get(name).map(|&i| i as RegionId)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn into_names(self) -> Vec<String> {
        self.names
    }
}
