//! The desired routing state as the control service holds it: versions, the stacks'
//! operator and health state, and the audit record every change leaves behind.
//!
//! Plain data, free of protobuf and of storage concerns. Serde derives serve both the
//! store (JSON records) and the HTTP API.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Operator and health state of one stack, on top of what the policy says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRuntime {
    pub name: String,
    /// Region, from the policy (informational).
    #[serde(default)]
    pub region: String,
    /// Operator weight factor 0..=100, kept while draining.
    pub weight_percent: u32,
    pub healthy: bool,
    /// No new visitors; affinity cookie holders stay until their cookie expires or
    /// `drain_deadline_unix_ms` passes.
    pub draining: bool,
    /// End of the drain (Unix ms); 0 = until the cookies expire. Only set while draining.
    #[serde(default)]
    pub drain_deadline_unix_ms: u64,
    /// Everyone moves off the stack now, cookie holders included.
    #[serde(default)]
    pub evacuating: bool,
    pub registered: bool,
    /// Why the stack was marked unhealthy.
    #[serde(default)]
    pub health_reason: String,
    /// Why the stack is draining or evacuating.
    #[serde(default)]
    pub drain_reason: String,
    /// Why the weight was set below 100.
    #[serde(default)]
    pub weight_reason: String,
    /// Why the stack was deregistered.
    #[serde(default)]
    pub deregister_reason: String,
    /// Informational endpoint given at registration.
    #[serde(default)]
    pub endpoint: String,
    /// Version, time and actor of the last change to this stack's state.
    pub changed_version: u64,
    pub changed_unix_ms: u64,
    #[serde(default)]
    pub changed_by: String,
}

impl StackRuntime {
    /// A stack the policy just introduced: full weight, healthy, registered.
    pub fn new(name: &str, region: &str, version: u64, now_ms: u64, actor: &str) -> Self {
        Self {
            name: name.to_string(),
            region: region.to_string(),
            weight_percent: 100,
            healthy: true,
            draining: false,
            drain_deadline_unix_ms: 0,
            evacuating: false,
            registered: true,
            health_reason: String::new(),
            drain_reason: String::new(),
            weight_reason: String::new(),
            deregister_reason: String::new(),
            endpoint: String::new(),
            changed_version: version,
            changed_unix_ms: now_ms,
            changed_by: actor.to_string(),
        }
    }

    /// Whether Envoys may route to the stack at all.
    pub fn eligible(&self) -> bool {
        self.healthy && self.registered
    }

    /// The reason that matters most right now: deregistered, then unhealthy, then
    /// draining or evacuating, then a reduced weight. Empty when the stack is at full service.
    pub fn reason(&self) -> &str {
        if !self.registered {
            &self.deregister_reason
        } else if !self.healthy {
            &self.health_reason
        } else if self.draining || self.evacuating {
            &self.drain_reason
        } else if self.weight_percent < 100 {
            &self.weight_reason
        } else {
            ""
        }
    }

    /// The factor Envoys apply to new visitors: 0 whenever the stack must take no new
    /// traffic.
    pub fn effective_weight_percent(&self) -> u32 {
        if self.draining || self.evacuating || !self.eligible() {
            0
        } else {
            self.weight_percent
        }
    }
}

/// What a version changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The `--bootstrap-policy` applied to an empty store.
    Bootstrap,
    PolicyApply,
    PolicyRollback,
    StackWeight,
    StackDrain,
    StackEvacuate,
    StackUndrain,
    StackUnhealthy,
    StackHealthy,
    StackRegister,
    StackDeregister,
    /// Stacks' shares within one rule (a rule-scoped rollout).
    RuleShare,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::PolicyApply => "policy_apply",
            Self::PolicyRollback => "policy_rollback",
            Self::StackWeight => "stack_weight",
            Self::StackDrain => "stack_drain",
            Self::StackEvacuate => "stack_evacuate",
            Self::StackUndrain => "stack_undrain",
            Self::StackUnhealthy => "stack_unhealthy",
            Self::StackHealthy => "stack_healthy",
            Self::StackRegister => "stack_register",
            Self::StackDeregister => "stack_deregister",
            Self::RuleShare => "rule_share",
        }
    }

    /// Whether this change sets a new policy document.
    pub fn sets_policy(self) -> bool {
        matches!(
            self,
            Self::Bootstrap | Self::PolicyApply | Self::PolicyRollback
        )
    }
}

/// One committed version: the audit entry plus the complete stack state at that
/// version. The policy document lives beside it in the store, keyed by
/// `policy_version` (only versions that set a policy store one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub created_unix_ms: u64,
    pub kind: ChangeKind,
    pub summary: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub comment: String,
    /// The version whose policy document is in force at this version.
    pub policy_version: u64,
    #[serde(default)]
    pub policy_name: Option<String>,
    pub policy_digest: String,
    /// Every stack the policy names, in policy order.
    pub stacks: Vec<StackRuntime>,
    /// Stacks' shares within single rules (rule-scoped rollouts), on top of `stacks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_stacks: Vec<RuleStack>,
}

/// A stack's factor within one rule (a rule-scoped rollout), on top of its own state:
/// within the rule its factor for new visitors is its own times `weight_percent` / 100.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStack {
    pub rule: String,
    pub stack: String,
    pub weight_percent: u32,
    /// Out of the rule now, affinity cookie holders included (without it, weight 0 is a
    /// drain within the rule: cookie holders stay).
    #[serde(default)]
    pub evacuating: bool,
}

impl VersionRecord {
    pub fn stack(&self, name: &str) -> Option<&StackRuntime> {
        self.stacks.iter().find(|s| s.name == name)
    }
}

/// First 12 hex digits of the SHA-256 of a policy document: identifies a document in
/// history and logs.
pub fn policy_digest(policy_json: &str) -> String {
    let digest = Sha256::digest(policy_json.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch, wall clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_weight_is_zero_unless_eligible_and_not_draining() {
        let mut s = StackRuntime::new("blue", "us", 1, 0, "t");
        s.weight_percent = 40;
        assert_eq!(s.effective_weight_percent(), 40);
        s.draining = true;
        assert_eq!(s.effective_weight_percent(), 0);
        s.draining = false;
        s.evacuating = true;
        assert_eq!(s.effective_weight_percent(), 0);
        s.evacuating = false;
        s.healthy = false;
        assert_eq!(s.effective_weight_percent(), 0);
        s.healthy = true;
        s.registered = false;
        assert_eq!(s.effective_weight_percent(), 0);
    }

    #[test]
    fn records_stored_before_drain_deadlines_still_load() {
        let old = r#"{"name":"blue","weight_percent":100,"healthy":true,"draining":true,
            "registered":true,"changed_version":3,"changed_unix_ms":5}"#;
        let s: StackRuntime = serde_json::from_str(old).unwrap();
        assert!(s.draining && !s.evacuating);
        assert_eq!(s.drain_deadline_unix_ms, 0);
    }

    #[test]
    fn digest_is_short_hex() {
        let d = policy_digest("{}");
        assert_eq!(d.len(), 12);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
