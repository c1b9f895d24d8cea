//! The event registry (paper §8.4, correlation): deployments, load tests, campaigns and
//! maintenance windows, each with a scope and a time range. Detection reads it to
//! suppress alarms an announced campaign explains and to blame a deployment that shortly
//! preceded an anomaly; incidents quote the events in their evidence.
//!
//! Also here: the parsing of an Alertmanager-compatible webhook into incident triggers
//! (a pure function).
//!
//! Input is validated strictly: every problem is reported with its field path, and a
//! rejected event or webhook changes nothing. Events persist under `events/item/<id>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock::UnixMs;
use crate::store::{Batch, Store, StoreError};

/// Key prefix of stored events.
pub const EVENTS_PREFIX: &str = "events/item/";
const EVENTS_SEQ: &str = "events/seq";
/// Longest accepted event (a campaign or maintenance window): 90 days.
pub const MAX_EVENT_MS: u64 = 90 * 24 * 3_600_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Deployment,
    LoadTest,
    Campaign,
    Maintenance,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Deployment => "deployment",
            EventKind::LoadTest => "load_test",
            EventKind::Campaign => "campaign",
            EventKind::Maintenance => "maintenance",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "deployment" => EventKind::Deployment,
            "load_test" | "load-test" | "loadtest" => EventKind::LoadTest,
            "campaign" => EventKind::Campaign,
            "maintenance" => EventKind::Maintenance,
            _ => return None,
        })
    }
}

/// Where an event applies. JSON: `"all"`, `{"stacks": ["green"]}`, `{"segment": "eu"}`
/// or `{"rule": "checkout"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    All,
    Stacks(Vec<String>),
    Segment(String),
    Rule(String),
}

impl Scope {
    /// Does the event apply to this stack, which serves these segments and rules?
    pub fn covers(&self, stack: &str, segments: &[String], rules: &[String]) -> bool {
        match self {
            Scope::All => true,
            Scope::Stacks(s) => s.iter().any(|x| x == stack),
            Scope::Segment(s) => segments.iter().any(|x| x == s),
            Scope::Rule(r) => rules.iter().any(|x| x == r),
        }
    }

    /// Short text form: `all`, `stacks:a,b`, `segment:eu`, `rule:r1`.
    pub fn label(&self) -> String {
        match self {
            Scope::All => "all".into(),
            Scope::Stacks(s) => format!("stacks:{}", s.join(",")),
            Scope::Segment(s) => format!("segment:{s}"),
            Scope::Rule(r) => format!("rule:{r}"),
        }
    }
}

/// A registered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub kind: EventKind,
    pub scope: Scope,
    #[serde(alias = "from")]
    pub from_ms: UnixMs,
    #[serde(alias = "to")]
    pub to_ms: UnixMs,
    pub description: String,
    pub actor: String,
}

impl Event {
    /// Does the event's time range overlap `[from, to]` (both inclusive)?
    pub fn overlaps(&self, from: UnixMs, to: UnixMs) -> bool {
        self.from_ms <= to && from <= self.to_ms
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Errors of the registry and of webhook parsing.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("invalid: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("event {0} already exists")]
    Duplicate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventError {
    /// The problems of an `Invalid` error (empty otherwise).
    pub fn problems(&self) -> &[Problem] {
        match self {
            EventError::Invalid(p) => p,
            _ => &[],
        }
    }
}

/// Collects every problem in one pass.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
    fn finish<T>(self, v: T) -> Result<T, EventError> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(EventError::Invalid(self.0))
        }
    }
}

/// A name usable in keys and scopes: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn take_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
    path: &str,
    p: &mut Problems,
) -> Option<&'a str> {
    match obj.get(field) {
        None => {
            p.add(path, "is required");
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            p.add(path, "must be a string");
            None
        }
    }
}

fn take_ms(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    path: &str,
    p: &mut Problems,
) -> Option<UnixMs> {
    match obj.get(field) {
        None => {
            p.add(path, "is required");
            None
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Some(v),
            None => {
                p.add(path, "must be a non-negative integer (Unix ms)");
                None
            }
        },
        Some(Value::String(s)) => match parse_rfc3339_ms(s) {
            Some(v) => Some(v),
            None => {
                p.add(path, "must be Unix ms or an RFC 3339 time after 1970");
                None
            }
        },
        Some(_) => {
            p.add(path, "must be Unix ms or an RFC 3339 time");
            None
        }
    }
}

fn parse_scope(v: Option<&Value>, p: &mut Problems) -> Option<Scope> {
    const HOW: &str =
        "must be \"all\", {\"stacks\": [..]}, {\"segment\": \"..\"} or {\"rule\": \"..\"}";
    match v {
        None => {
            p.add("scope", "is required");
            None
        }
        Some(Value::String(s)) if s == "all" => Some(Scope::All),
        Some(Value::Object(o)) if o.len() == 1 => {
            let (k, v) = o.iter().next()?;
            match (k.as_str(), v) {
                ("stacks", Value::Array(a)) => {
                    if a.is_empty() {
                        p.add("scope.stacks", "must name at least one stack");
                        return None;
                    }
                    let mut out = Vec::new();
                    let mut ok = true;
                    for (i, s) in a.iter().enumerate() {
                        match s.as_str() {
                            Some(s) if valid_name(s) => {
                                if !out.iter().any(|x: &String| x == s) {
                                    out.push(s.to_string())
                                }
                            }
                            _ => {
                                ok = false;
                                p.add(
                                    format!("scope.stacks[{i}]"),
                                    "must be a stack name (1-64 of A-Z a-z 0-9 . _ -)",
                                );
                            }
                        }
                    }
                    ok.then_some(Scope::Stacks(out))
                }
                ("segment" | "rule", Value::String(s)) if valid_name(s) => {
                    Some(if k == "segment" {
                        Scope::Segment(s.clone())
                    } else {
                        Scope::Rule(s.clone())
                    })
                }
                ("segment" | "rule", _) => {
                    p.add(
                        format!("scope.{k}"),
                        "must be a name (1-64 of A-Z a-z 0-9 . _ -)",
                    );
                    None
                }
                _ => {
                    p.add("scope", HOW);
                    None
                }
            }
        }
        Some(_) => {
            p.add("scope", HOW);
            None
        }
    }
}

/// Parse and validate an event from its JSON form: `{"id"?, "kind", "scope", "from",
/// "to", "description"?, "actor"}` (`from`/`to` as Unix ms or RFC 3339). Unknown fields
/// are an error. Without `id`, the registry assigns one.
pub fn parse_event(json: &str) -> Result<(Option<String>, EventDraft), EventError> {
    let v: Value = serde_json::from_str(json).map_err(|e| {
        EventError::Invalid(vec![Problem {
            field: "$".into(),
            message: format!("not JSON: {e}"),
        }])
    })?;
    let Value::Object(obj) = v else {
        return Err(EventError::Invalid(vec![Problem {
            field: "$".into(),
            message: "must be a JSON object".into(),
        }]));
    };
    let mut p = Problems::default();
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "id" | "kind" | "scope" | "from" | "to" | "description" | "actor"
        ) {
            p.add(k.clone(), "unknown field");
        }
    }
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.add("id", "must be a string");
            None
        }
    };
    let kind = take_str(&obj, "kind", "kind", &mut p).and_then(|s| {
        let k = EventKind::parse(s);
        if k.is_none() {
            p.add(
                "kind",
                format!("unknown kind {s:?} (deployment, load_test, campaign, maintenance)"),
            );
        }
        k
    });
    let scope = parse_scope(obj.get("scope"), &mut p);
    let from_ms = take_ms(&obj, "from", "from", &mut p);
    let to_ms = take_ms(&obj, "to", "to", &mut p);
    let description = match obj.get("description") {
        None => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.add("description", "must be a string");
            None
        }
    };
    let actor = take_str(&obj, "actor", "actor", &mut p).map(str::to_string);
    let draft = match (kind, scope, from_ms, to_ms, description, actor) {
        (Some(kind), Some(scope), Some(from_ms), Some(to_ms), Some(description), Some(actor)) => {
            Some(EventDraft {
                kind,
                scope,
                from_ms,
                to_ms,
                description,
                actor,
            })
        }
        _ => None,
    };
    if let Some(d) = &draft {
        d.check(&mut p);
    }
    if let Some(id) = &id {
        if !valid_name(id) {
            p.add("id", "must be 1-64 of A-Z a-z 0-9 . _ -");
        }
    }
    match draft {
        Some(d) if p.0.is_empty() => Ok((id, d)),
        _ => Err(EventError::Invalid(p.0)),
    }
}

/// An event before the registry gave it an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub kind: EventKind,
    pub scope: Scope,
    pub from_ms: UnixMs,
    pub to_ms: UnixMs,
    pub description: String,
    pub actor: String,
}

impl EventDraft {
    fn check(&self, p: &mut Problems) {
        if self.to_ms < self.from_ms {
            p.add("to", "must not be before from");
        } else if self.to_ms - self.from_ms > MAX_EVENT_MS {
            p.add("to", "the event may last at most 90 days");
        }
        if self.description.len() > 1_000 {
            p.add("description", "at most 1000 bytes");
        }
        if self.actor.trim().is_empty() {
            p.add("actor", "must not be empty");
        } else if self.actor.len() > 128 {
            p.add("actor", "at most 128 bytes");
        }
        if let Scope::Stacks(s) = &self.scope {
            if s.is_empty() {
                p.add("scope.stacks", "must name at least one stack");
            }
        }
    }
}

/// The registry over a [`Store`].
pub struct EventRegistry<'a> {
    store: &'a dyn Store,
}

impl<'a> EventRegistry<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    /// Validate and store an event. Without an id, assigns `evt-<n>` from a sequence.
    /// A duplicate id is refused; nothing is written on any error.
    pub fn add(&self, id: Option<String>, draft: EventDraft) -> Result<Event, EventError> {
        let mut p = Problems::default();
        draft.check(&mut p);
        if let Some(id) = &id {
            if !valid_name(id) {
                p.add("id", "must be 1-64 of A-Z a-z 0-9 . _ -");
            }
        }
        p.finish(())?;
        let seq_old = self.store.read(EVENTS_SEQ)?;
        let seq: u64 = seq_old
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0)
            + 1;
        let id = id.unwrap_or_else(|| format!("evt-{seq}"));
        let event = Event {
            id: id.clone(),
            kind: draft.kind,
            scope: draft.scope,
            from_ms: draft.from_ms,
            to_ms: draft.to_ms,
            description: draft.description,
            actor: draft.actor,
        };
        let key = format!("{EVENTS_PREFIX}{id}");
        let bytes = serde_json::to_vec(&event).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut b = Batch::new().absent(key.clone());
        b = match seq_old {
            Some(old) => b.equals(EVENTS_SEQ, old),
            None => b.absent(EVENTS_SEQ),
        };
        b = b.put(key.clone(), bytes).put(EVENTS_SEQ, seq.to_string());
        match self.store.commit(&b) {
            Ok(()) => Ok(event),
            Err(StoreError::Conflict { key: k, .. }) if k == key => Err(EventError::Duplicate(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Parse, validate and store an event given as JSON (see [`parse_event`]).
    pub fn add_json(&self, json: &str) -> Result<Event, EventError> {
        let (id, draft) = parse_event(json)?;
        self.add(id, draft)
    }

    pub fn get(&self, id: &str) -> Result<Option<Event>, EventError> {
        let Some(b) = self.store.read(&format!("{EVENTS_PREFIX}{id}"))? else {
            return Ok(None);
        };
        Ok(Some(decode(&b)?))
    }

    /// Every stored event, in id order.
    pub fn all(&self) -> Result<Vec<Event>, EventError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(EVENTS_PREFIX, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, v) in &page {
                out.push(decode(v)?);
            }
            if page.len() < 256 {
                break;
            }
        }
        Ok(out)
    }

    /// Events overlapping `[from, to]` that apply to `stack` (serving `segments` and
    /// `rules`), ordered by start.
    pub fn overlapping(
        &self,
        from: UnixMs,
        to: UnixMs,
        stack: &str,
        segments: &[String],
        rules: &[String],
    ) -> Result<Vec<Event>, EventError> {
        let mut v: Vec<Event> = self
            .all()?
            .into_iter()
            .filter(|e| e.overlaps(from, to) && e.scope.covers(stack, segments, rules))
            .collect();
        v.sort_by_key(|e| (e.from_ms, e.id.clone()));
        Ok(v)
    }

    /// Delete an event; `false` when there was none.
    pub fn remove(&self, id: &str) -> Result<bool, EventError> {
        let key = format!("{EVENTS_PREFIX}{id}");
        let Some(old) = self.store.read(&key)? else {
            return Ok(false);
        };
        self.store
            .commit(&Batch::new().equals(key.clone(), old).delete(key))?;
        Ok(true)
    }
}

fn decode(b: &[u8]) -> Result<Event, EventError> {
    serde_json::from_slice(b)
        .map_err(|e| EventError::Store(StoreError::Backend(format!("bad event record: {e}"))))
}

/// Whether an alert is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert of an Alertmanager webhook, as an incident trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTrigger {
    pub fingerprint: String,
    pub status: AlertStatus,
    /// From the `switchyard_stack` label, else `stack`.
    pub stack: Option<String>,
    /// From `switchyard_scope`/`scope`, else the stack, else `all`.
    pub scope: String,
    /// The `alertname` label (`alert` when absent).
    pub name: String,
    /// The `severity` label, if any.
    pub severity: Option<String>,
    /// `summary` annotation, else `description`, else empty.
    pub summary: String,
    pub starts_at_ms: UnixMs,
    /// `None` for Alertmanager's zero time (still firing, no end known).
    pub ends_at_ms: Option<UnixMs>,
    pub labels: BTreeMap<String, String>,
}

fn str_map(v: Option<&Value>, path: &str, p: &mut Problems) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                match v.as_str() {
                    Some(s) => {
                        out.insert(k.clone(), s.to_string());
                    }
                    None => p.add(format!("{path}.{k}"), "must be a string"),
                }
            }
        }
        Some(_) => p.add(path, "must be an object of strings"),
    }
    out
}

/// Parse an Alertmanager webhook body (version "4") into one trigger per alert.
/// Fields Switchyard does not use (`receiver`, `groupKey`, `externalURL`, …) are
/// ignored, since Alertmanager adds fields over time; the ones it uses are checked
/// strictly and every problem is reported with its path. A bad payload yields no
/// trigger at all.
pub fn parse_alertmanager(body: &str) -> Result<Vec<AlertTrigger>, EventError> {
    let v: Value = serde_json::from_str(body).map_err(|e| {
        EventError::Invalid(vec![Problem {
            field: "$".into(),
            message: format!("not JSON: {e}"),
        }])
    })?;
    let mut p = Problems::default();
    let Value::Object(obj) = v else {
        p.add("$", "must be a JSON object");
        return p.finish(Vec::new());
    };
    match obj.get("version") {
        Some(Value::String(s)) if s == "4" => {}
        Some(Value::String(s)) => {
            p.add("version", format!("unsupported version {s:?} (want \"4\")"))
        }
        _ => p.add("version", "is required and must be the string \"4\""),
    }
    match obj.get("status").and_then(Value::as_str) {
        Some("firing" | "resolved") => {}
        _ => p.add("status", "must be \"firing\" or \"resolved\""),
    }
    let Some(Value::Array(alerts)) = obj.get("alerts") else {
        p.add("alerts", "is required and must be an array");
        return p.finish(Vec::new());
    };
    let mut out = Vec::new();
    for (i, a) in alerts.iter().enumerate() {
        let path = format!("alerts[{i}]");
        let Value::Object(a) = a else {
            p.add(path, "must be an object");
            continue;
        };
        let status = match a.get("status").and_then(Value::as_str) {
            Some("firing") => Some(AlertStatus::Firing),
            Some("resolved") => Some(AlertStatus::Resolved),
            _ => {
                p.add(
                    format!("{path}.status"),
                    "must be \"firing\" or \"resolved\"",
                );
                None
            }
        };
        let labels = str_map(a.get("labels"), &format!("{path}.labels"), &mut p);
        let annotations = str_map(a.get("annotations"), &format!("{path}.annotations"), &mut p);
        let starts = match a.get("startsAt").and_then(Value::as_str) {
            Some(s) => match parse_rfc3339_ms(s) {
                Some(t) => Some(t),
                None => {
                    p.add(
                        format!("{path}.startsAt"),
                        "must be an RFC 3339 time after 1970",
                    );
                    None
                }
            },
            None => {
                p.add(format!("{path}.startsAt"), "is required (RFC 3339)");
                None
            }
        };
        let ends = match a.get("endsAt") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if s.starts_with("0001-01-01") => Some(None),
            Some(Value::String(s)) => match parse_rfc3339_ms(s) {
                Some(t) => Some(Some(t)),
                None => {
                    p.add(format!("{path}.endsAt"), "must be an RFC 3339 time");
                    None
                }
            },
            Some(_) => {
                p.add(format!("{path}.endsAt"), "must be an RFC 3339 time");
                None
            }
        };
        let fingerprint = match a.get("fingerprint").and_then(Value::as_str) {
            Some(f) if !f.is_empty() && f.len() <= 128 => Some(f.to_string()),
            _ => {
                p.add(
                    format!("{path}.fingerprint"),
                    "is required (non-empty string)",
                );
                None
            }
        };
        let stack = labels
            .get("switchyard_stack")
            .or_else(|| labels.get("stack"))
            .cloned();
        if let Some(s) = &stack {
            if !valid_name(s) {
                p.add(
                    format!("{path}.labels.stack"),
                    "must be a stack name (1-64 of A-Z a-z 0-9 . _ -)",
                );
            }
        }
        let scope = labels
            .get("switchyard_scope")
            .or_else(|| labels.get("scope"))
            .cloned()
            .or_else(|| stack.clone())
            .unwrap_or_else(|| "all".into());
        if let (Some(status), Some(starts_at_ms), Some(ends_at_ms), Some(fingerprint)) =
            (status, starts, ends, fingerprint)
        {
            out.push(AlertTrigger {
                fingerprint,
                status,
                stack,
                scope,
                name: labels
                    .get("alertname")
                    .cloned()
                    .unwrap_or_else(|| "alert".into()),
                severity: labels.get("severity").cloned(),
                summary: annotations
                    .get("summary")
                    .or_else(|| annotations.get("description"))
                    .cloned()
                    .unwrap_or_default(),
                starts_at_ms,
                ends_at_ms,
                labels,
            });
        }
    }
    p.finish(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into Unix ms; `None` when malformed or
/// before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<UnixMs> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3_600 + om * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + se.min(59) - offset_s;
    let ms = secs.checked_mul(1_000)? + frac_ms;
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests;
