//! Region ids. Regions are not declared on their own: they are interned, in document
//! order, from the stacks and the geo tables; rule matches and residency lists may only
//! name regions interned that way.

use crate::hash::NameMap;
use crate::policy::ids::{RegionId, StackId};

/// Region names in id order, with a map for lookups: a geo table may name thousands of
/// regions (up to the 65,535 a [`RegionId`] holds), and a linear search per entry would
/// make compiling it quadratic. The map costs the module about 500 bytes.
#[derive(Debug, Default)]
pub(super) struct Regions {
    names: Vec<String>,
    // `StackId` (usize) values, the map type `stack_index` already instantiates.
    ids: NameMap<String, StackId>,
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
