//! The JSON shape of a policy document, checked on a `serde_json::Value` before the
//! document types see it, so that every structural problem is reported at once: each
//! unknown field (with a "did you mean" when a known field is one or two edits away),
//! wrong type, out-of-range integer, missing required field and unknown variant, with its
//! field path. It also returns the document *repaired* for the semantic checks: unknown
//! fields dropped, an unusable optional value dropped (its default applies), an unusable
//! required value replaced by a placeholder of the right type; the paths it repaired
//! are returned so that findings about repaired values can be set aside.
//!
//! One source of truth: this table must list exactly the fields of the document types
//! (`switchyard-policy-doc`). Unit tests serialise a document with every field and every
//! variant set and fail both when the table does not know one of its keys and when the
//! table describes a field or variant the document types do not have.
//!
//! Native only (the control service's validator): the wasm filter receives documents
//! the control service has validated and rejects a bad one at its first error.

use serde_json::{Map, Number, Value};

use super::check::Ctx;

/// What a JSON value must look like.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Str,
    Bool,
    /// A non-negative integer up to this maximum (`u16`, `u32`, `u64`).
    Uint(u64),
    /// An `i32`.
    Int32,
    /// Any number (`f64`).
    Num,
    /// `null` or the inner shape (`Option<T>`).
    Opt(&'static Shape),
    List(&'static Shape),
    /// An object with free keys (country → region).
    Map(&'static Shape),
    Obj(&'static [Field]),
    /// An externally tagged enum: a bare string naming a unit variant, or an object of
    /// one field naming a variant that holds a string (`"client_ip"`,
    /// `{"header": "x-user"}`).
    Variant {
        units: &'static [&'static str],
        strings: &'static [&'static str],
    },
    /// An internally tagged enum: an object whose `tag` field names the variant.
    Tagged {
        tag: &'static str,
        variants: &'static [(&'static str, &'static [Field])],
    },
}

/// A field of an object.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    shape: Shape,
    required: bool,
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: true,
    }
}

const fn opt(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: false,
    }
}

use Shape::{Bool, Int32, List, Num, Obj, Opt, Str, Uint};

const U16: Shape = Uint(u16::MAX as u64);
const U32: Shape = Uint(u32::MAX as u64);
const U64: Shape = Uint(u64::MAX);
const STRS: Shape = List(&Str);
const OPT_STR: Shape = Opt(&Str);

/// The whole document (`PolicyDoc`).
const POLICY: &[Field] = &[
    opt("name", OPT_STR),
    req("stacks", List(&Obj(STACK))),
    opt("classify", Obj(CLASSIFY)),
    opt("affinity", Obj(AFFINITY)),
    opt("breaker", Obj(BREAKER)),
    opt("rules", List(&Obj(RULE))),
    req("default", Obj(ROUTE)),
    opt("debug_header", Bool),
    // Business KPIs counted per stack (the telemetry work adds them to the document).
    opt("kpis", List(&Obj(KPI))),
];

const STACK: &[Field] = &[
    req("name", Str),
    opt("cluster", OPT_STR),
    req("region", Str),
    opt("labels", STRS),
    opt("weight", U32),
    opt("health_path", OPT_STR),
];

const CLASSIFY: &[Field] = &[
    opt("geo", Obj(GEO)),
    opt("channels", List(&Obj(CHANNEL))),
    opt("default_channel", OPT_STR),
    opt("cohort_header", OPT_STR),
    opt("user_key", List(&KEY)),
    opt("bucket_salt", OPT_STR),
];

const GEO: &[Field] = &[
    opt("header", OPT_STR),
    opt("countries", Shape::Map(&Str)),
    opt("cidrs", List(&Obj(CIDR))),
    opt("ambiguous", Opt(&Obj(AMBIGUOUS))),
];

/// `AmbiguousDoc` (a string map; the compiler checks the values).
const AMBIGUOUS: &[Field] = &[req("mode", Str), opt("region", OPT_STR)];

const CIDR: &[Field] = &[req("cidr", Str), req("region", Str)];

const CHANNEL: &[Field] = &[
    req("name", Str),
    opt("user_agent_contains", STRS),
    opt("headers", STRS),
    opt("path_prefixes", STRS),
];

/// `KeyDoc`.
const KEY: Shape = Shape::Variant {
    units: &["client_ip"],
    strings: &["header", "cookie"],
};

const AFFINITY: &[Field] = &[
    opt("cookie", Str),
    opt("ttl_s", U64),
    opt("secure", Bool),
    opt("epoch", U32),
];

const BREAKER: &[Field] = &[
    opt("enabled", Bool),
    opt("consecutive_failures", U32),
    opt("error_rate", Num),
    opt("window_ms", U64),
    opt("min_requests", U32),
    opt("open_ms", U64),
    opt("max_open_ms", U64),
    opt("half_open_requests", U32),
];

const RULE: &[Field] = &[
    req("id", Str),
    opt("priority", Int32),
    opt("match", Obj(MATCH)),
    req("route", Obj(ROUTE)),
];

const MATCH: &[Field] = &[
    opt("regions", STRS),
    opt("countries", STRS),
    opt("channels", STRS),
    opt("cohorts", STRS),
    opt("path_prefixes", STRS),
    opt("methods", STRS),
    opt("time", Opt(&Obj(TIME))),
    opt("percent", Opt(&Obj(PERCENT))),
];

const TIME: &[Field] = &[
    opt("windows", List(&Obj(WINDOW))),
    opt("days", STRS),
    opt("campaigns", List(&Obj(CAMPAIGN))),
];

const WINDOW: &[Field] = &[req("start", Str), req("end", Str)];

const CAMPAIGN: &[Field] = &[opt("name", OPT_STR), req("start", Str), req("end", Str)];

const PERCENT: &[Field] = &[opt("from", Num), req("to", Num)];

const ROUTE: &[Field] = &[
    req("targets", List(&Obj(TARGET))),
    opt("balance", BALANCE),
    opt("affinity", Bool),
    opt("affinity_ttl_s", Opt(&U64)),
    opt("residency", Opt(&STRS)),
    opt("fallback", Opt(&Obj(FALLBACK))),
];

const TARGET: &[Field] = &[req("stack", Str), opt("weight", Opt(&U32))];

/// `BalanceDoc`: `weighted` reads `key` only so that validation can reject it.
const BALANCE: Shape = Shape::Tagged {
    tag: "mode",
    variants: &[
        ("weighted", &[opt("key", Opt(&HASH_KEY))]),
        ("hash", &[req("key", HASH_KEY)]),
    ],
};

/// `HashKeyDoc`.
const HASH_KEY: Shape = Shape::Variant {
    units: &["user", "client_ip"],
    strings: &["header", "cookie"],
};

const FALLBACK: &[Field] = &[
    opt("targets", List(&Obj(TARGET))),
    opt("local", Opt(&Obj(LOCAL))),
    opt("queue", Opt(&Obj(QUEUE))),
];

/// `QueueDoc` (a string map; the compiler checks the values).
const QUEUE: &[Field] = &[
    req("cluster", Str),
    opt("region", OPT_STR),
    opt("when", OPT_STR),
];

const LOCAL: &[Field] = &[
    opt("status", U16),
    opt("retry_after_s", U32),
    opt("message", OPT_STR),
];

const KPI: &[Field] = &[
    req("name", Str),
    opt("method", OPT_STR),
    opt("path_prefix", OPT_STR),
    opt("status", OPT_STR),
];

/// The outcome of checking a document's shape.
pub(in crate::policy) struct Checked {
    /// The document with unknown fields dropped and unusable values dropped or replaced
    /// by placeholders; `None` when the root is not an object.
    pub repaired: Option<Value>,
    /// Paths whose value was dropped or replaced (every reported problem except an
    /// unknown field, which is simply dropped).
    pub repaired_paths: Vec<String>,
}

/// Check the shape of a whole document, reporting every problem into `ctx`.
pub(in crate::policy) fn check(ctx: &mut Ctx, doc: &Value) -> Checked {
    let mut checker = Checker {
        ctx,
        repaired: Vec::new(),
    };
    let repaired = checker.value("", &Obj(POLICY), doc);
    Checked {
        repaired,
        repaired_paths: checker.repaired,
    }
}

/// Whether a finding at `path` is about a value the shape check repaired (at, above or
/// below a repaired path): judged on a placeholder, it says nothing about the document.
pub(in crate::policy) fn touches_repaired(path: &str, repaired: &[String]) -> bool {
    fn under(path: &str, root: &str) -> bool {
        root.is_empty()
            || root == "$"
            || path.strip_prefix(root).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
    }
    repaired.iter().any(|r| under(path, r) || under(r, path))
}

/// `path.name` (`name` at the root).
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// How a path is reported: the root is `$`.
fn shown(path: &str) -> &str {
    if path.is_empty() {
        "$"
    } else {
        path
    }
}

struct Checker<'a> {
    ctx: &'a mut Ctx,
    repaired: Vec<String>,
}

impl Checker<'_> {
    /// Check `v` against `shape`: the value to keep (repaired inside), or `None` when `v`
    /// itself is unusable (already reported).
    fn value(&mut self, path: &str, shape: &Shape, v: &Value) -> Option<Value> {
        match (shape, v) {
            (Shape::Str, Value::String(_)) | (Shape::Bool, Value::Bool(_)) => Some(v.clone()),
            (Shape::Num, Value::Number(_)) => Some(v.clone()),
            (Shape::Uint(max), Value::Number(n)) => {
                let ok = n.as_u64().is_some_and(|x| x <= *max);
                self.integer(path, n, ok, &describe(shape))
            }
            (Shape::Int32, Value::Number(n)) => {
                let ok = n.as_i64().is_some_and(|x| i32::try_from(x).is_ok());
                self.integer(path, n, ok, &describe(shape))
            }
            (Shape::Opt(_), Value::Null) => Some(Value::Null),
            (Shape::Opt(inner), _) => self.value(path, inner, v),
            (Shape::List(item), Value::Array(items)) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let p = format!("{path}[{i}]");
                        self.value(&p, item, x).unwrap_or_else(|| placeholder(item))
                    })
                    .collect();
                Some(Value::Array(items))
            }
            (Shape::Map(item), Value::Object(entries)) => {
                let entries = entries
                    .iter()
                    .map(|(k, x)| {
                        let p = join(path, k);
                        let x = self.value(&p, item, x).unwrap_or_else(|| placeholder(item));
                        (k.clone(), x)
                    })
                    .collect();
                Some(Value::Object(entries))
            }
            (Shape::Obj(fields), Value::Object(obj)) => {
                Some(Value::Object(self.fields(path, fields, obj, None)))
            }
            (Shape::Variant { units, strings }, Value::String(s)) => {
                if units.contains(&s.as_str()) {
                    Some(v.clone())
                } else if strings.contains(&s.as_str()) {
                    self.wrong_form(path, units, strings)
                } else {
                    self.unknown_variant(path, s, units, strings)
                }
            }
            (Shape::Variant { units, strings }, Value::Object(obj)) => match obj.iter().next() {
                Some((k, x)) if obj.len() == 1 && strings.contains(&k.as_str()) => {
                    let x = self.value(&join(path, k), &Str, x)?;
                    Some(Value::Object(Map::from_iter([(k.clone(), x)])))
                }
                Some((k, _)) if obj.len() == 1 && !units.contains(&k.as_str()) => {
                    self.unknown_variant(path, k, units, strings)
                }
                _ => self.wrong_form(path, units, strings),
            },
            (Shape::Tagged { tag, variants }, Value::Object(obj)) => {
                let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
                let tag_path = join(path, tag);
                let (name, fields) = match obj.get(*tag) {
                    None => {
                        self.missing(&tag_path, tag);
                        return None;
                    }
                    Some(Value::String(s)) => match variants.iter().find(|(n, _)| n == s) {
                        Some(v) => v,
                        None => return self.unknown_variant(&tag_path, s, &names, &[]),
                    },
                    Some(other) => {
                        let one_of = format!("one of {}", forms(&names, &[]));
                        return self.wrong_type(&tag_path, &one_of, other);
                    }
                };
                let mut out = self.fields(path, fields, obj, Some(tag));
                out.insert((*tag).to_string(), Value::String((*name).to_string()));
                Some(Value::Object(out))
            }
            (shape, v) => self.wrong_type(path, &describe(shape), v),
        }
    }

    /// The known fields of an object (plus the enum tag `tag`, already checked), each
    /// checked; unknown fields reported and dropped; missing required ones reported and
    /// replaced by placeholders.
    fn fields(
        &mut self,
        path: &str,
        fields: &[Field],
        obj: &Map<String, Value>,
        tag: Option<&str>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, v) in obj {
            if Some(key.as_str()) == tag {
                continue;
            }
            let p = join(path, key);
            let Some(field) = fields.iter().find(|f| f.name == key) else {
                self.unknown_field(&p, key, fields, tag);
                continue;
            };
            match self.value(&p, &field.shape, v) {
                Some(v) => {
                    out.insert(key.clone(), v);
                }
                None if field.required => {
                    out.insert(key.clone(), placeholder(&field.shape));
                }
                None => {}
            }
        }
        for f in fields.iter().filter(|f| f.required) {
            if !obj.contains_key(f.name) {
                self.missing(&join(path, f.name), f.name);
                out.insert(f.name.to_string(), placeholder(&f.shape));
            }
        }
        out
    }

    fn integer(&mut self, path: &str, n: &Number, in_range: bool, range: &str) -> Option<Value> {
        if in_range {
            return Some(Value::Number(n.clone()));
        }
        if n.is_f64() {
            return self.wrong_type(path, range, &Value::Number(n.clone()));
        }
        let at = shown(path);
        self.ctx.err(
            at,
            format!("invalid value: integer `{n}`, expected {range}"),
        );
        self.repaired.push(path.to_string());
        None
    }

    fn wrong_type(&mut self, path: &str, expected: &str, value: &Value) -> Option<Value> {
        let found = match value {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("boolean `{b}`"),
            Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
            Value::Number(n) => format!("integer `{n}`"),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(_) => "a list".to_string(),
            Value::Object(_) => "an object".to_string(),
        };
        let at = shown(path);
        self.ctx
            .err(at, format!("invalid type: {found}, expected {expected}"));
        self.repaired.push(path.to_string());
        None
    }

    fn missing(&mut self, path: &str, field: &str) {
        self.ctx.err(path, format!("missing field `{field}`"));
        self.repaired.push(path.to_string());
    }

    fn unknown_field(&mut self, path: &str, key: &str, fields: &[Field], tag: Option<&str>) {
        let names: Vec<&str> = tag
            .into_iter()
            .chain(fields.iter().map(|f| f.name))
            .collect();
        let hint = match did_you_mean(key, &names) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("expected one of {}", forms(&names, &[])),
        };
        self.ctx.err(path, format!("unknown field `{key}`, {hint}"));
    }

    fn unknown_variant(
        &mut self,
        path: &str,
        variant: &str,
        units: &[&str],
        strings: &[&str],
    ) -> Option<Value> {
        let all: Vec<&str> = units.iter().chain(strings).copied().collect();
        let hint = match did_you_mean(variant, &all) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("expected {}", forms(units, strings)),
        };
        let at = shown(path);
        self.ctx
            .err(at, format!("unknown variant `{variant}`, {hint}"));
        self.repaired.push(path.to_string());
        None
    }

    /// A key in the wrong form: `"header"` without its value, `{"user": …}`, or an
    /// object of several fields.
    fn wrong_form(&mut self, path: &str, units: &[&str], strings: &[&str]) -> Option<Value> {
        let choices = forms(units, strings);
        let at = shown(path);
        self.ctx
            .err(at, format!("expected exactly one of {choices}"));
        self.repaired.push(path.to_string());
        None
    }
}

/// `` `a`, `b`, {"c": …} or {"d": …} `` from unit and string variant names.
fn forms(units: &[&str], strings: &[&str]) -> String {
    let mut all: Vec<String> = units.iter().map(|n| format!("`{n}`")).collect();
    all.extend(strings.iter().map(|s| format!("{{\"{s}\": …}}")));
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => all.join(""),
    }
}

/// What a shape expects, for a type error.
fn describe(shape: &Shape) -> String {
    match shape {
        Shape::Str => "a string".into(),
        Shape::Bool => "a boolean".into(),
        Shape::Uint(max) => format!("an integer in 0..={max}"),
        Shape::Int32 => format!("an integer in {}..={}", i32::MIN, i32::MAX),
        Shape::Num => "a number".into(),
        Shape::Opt(inner) => format!("{} or null", describe(inner)),
        Shape::List(item) => format!("a list of {}", plural(item)),
        Shape::Map(_) | Shape::Obj(_) | Shape::Tagged { .. } => "an object".into(),
        Shape::Variant { units, strings } => format!("one of {}", forms(units, strings)),
    }
}

fn plural(shape: &Shape) -> String {
    match shape {
        Shape::Str => "strings".into(),
        Shape::Map(_) | Shape::Obj(_) | Shape::Tagged { .. } => "objects".into(),
        other => format!("({})", describe(other)),
    }
}

/// A value of the right shape standing in for an unusable required one. A string is a
/// valid name (`_`), so that what is derived from it (a stack's cluster defaults to its
/// name) raises nothing of its own.
fn placeholder(shape: &Shape) -> Value {
    match shape {
        Shape::Str => Value::String(PLACEHOLDER.into()),
        Shape::Bool => Value::Bool(false),
        Shape::Uint(_) | Shape::Int32 | Shape::Num => Value::from(0),
        Shape::Opt(_) => Value::Null,
        Shape::List(_) => Value::Array(Vec::new()),
        Shape::Map(_) => Value::Object(Map::new()),
        Shape::Obj(fields) => Value::Object(
            fields
                .iter()
                .filter(|f| f.required)
                .map(|f| (f.name.to_string(), placeholder(&f.shape)))
                .collect(),
        ),
        Shape::Variant { units, strings } => match (units.first(), strings.first()) {
            (Some(u), _) => Value::String((*u).to_string()),
            (None, Some(s)) => Value::Object(Map::from_iter([(
                (*s).to_string(),
                Value::String(PLACEHOLDER.into()),
            )])),
            (None, None) => Value::Null,
        },
        Shape::Tagged { tag, variants } => {
            let mut out = Map::new();
            if let Some((name, fields)) = variants.first() {
                out.insert((*tag).to_string(), Value::String((*name).to_string()));
                for f in fields.iter().filter(|f| f.required) {
                    out.insert(f.name.to_string(), placeholder(&f.shape));
                }
            }
            Value::Object(out)
        }
    }
}

const PLACEHOLDER: &str = "_";

/// The known name `key` most likely misspells: ignoring case, at most one edit away
/// (two for names of five characters or more), and closest.
fn did_you_mean<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    names
        .iter()
        .map(|n| (edit_distance(&key, n), *n))
        .filter(|(d, n)| *d <= if n.len() >= 5 { 2 } else { 1 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[k][j]: distance between a[..i-2+k] and b[..j], for the last three rows.
    let mut rows = [
        vec![0; b.len() + 1],
        vec![0; b.len() + 1],
        (0..=b.len()).collect(),
    ];
    for i in 1..=a.len() {
        rows.rotate_left(1);
        rows[2][0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[1][j] + 1)
                .min(rows[2][j - 1] + 1)
                .min(rows[1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[0][j - 2] + 1);
            }
            rows[2][j] = d;
        }
    }
    rows[2][b.len()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;

    use switchyard_policy_doc::*;

    use super::*;

    /// Every unit and newtype variant of the key enums, so a new variant fails to
    /// compile here until it is added (and then fails the test until the table has it).
    fn key_variants() -> Vec<KeyDoc> {
        let all = vec![
            KeyDoc::Header("x-user".into()),
            KeyDoc::Cookie("session".into()),
            KeyDoc::ClientIp,
        ];
        for k in &all {
            match k {
                KeyDoc::Header(_) | KeyDoc::Cookie(_) | KeyDoc::ClientIp => {}
            }
        }
        all
    }

    fn hash_key_variants() -> Vec<HashKeyDoc> {
        let all = vec![
            HashKeyDoc::User,
            HashKeyDoc::ClientIp,
            HashKeyDoc::Header("x-user".into()),
            HashKeyDoc::Cookie("session".into()),
        ];
        for k in &all {
            match k {
                HashKeyDoc::User
                | HashKeyDoc::ClientIp
                | HashKeyDoc::Header(_)
                | HashKeyDoc::Cookie(_) => {}
            }
        }
        all
    }

    fn balance_variants() -> Vec<BalanceDoc> {
        let mut all = vec![BalanceDoc::Weighted {
            key: Some(HashKeyDoc::User),
        }];
        all.extend(
            hash_key_variants()
                .into_iter()
                .map(|key| BalanceDoc::Hash { key }),
        );
        for b in &all {
            match b {
                BalanceDoc::Weighted { .. } | BalanceDoc::Hash { .. } => {}
            }
        }
        all
    }

    fn target() -> TargetDoc {
        TargetDoc {
            stack: "blue".into(),
            weight: Some(10),
        }
    }

    fn route(balance: BalanceDoc) -> RouteDoc {
        RouteDoc {
            targets: vec![target()],
            balance,
            affinity: true,
            affinity_ttl_s: Some(60),
            residency: Some(vec!["us".into()]),
            fallback: Some(FallbackDoc {
                targets: vec![target()],
                local: Some(LocalDoc {
                    status: 503,
                    retry_after_s: 5,
                    message: Some("later".into()),
                }),
                queue: Some(BTreeMap::from([
                    ("cluster".to_string(), "intake_us".to_string()),
                    ("region".to_string(), "us".to_string()),
                    ("when".to_string(), "no_eligible".to_string()),
                ])),
            }),
        }
    }

    /// A document with every field of every type set (struct literals without `..`, so
    /// that a new field fails to compile here until it is added).
    fn maximal() -> PolicyDoc {
        let matches = MatchDoc {
            regions: vec!["us".into()],
            countries: vec!["US".into()],
            channels: vec!["web".into()],
            cohorts: vec!["beta".into()],
            path_prefixes: vec!["/".into()],
            methods: vec!["GET".into()],
            time: Some(TimeDoc {
                windows: vec![WindowDoc {
                    start: "09:00".into(),
                    end: "17:00".into(),
                }],
                days: vec!["mon".into()],
                campaigns: vec![CampaignDoc {
                    name: Some("sale".into()),
                    start: "2026-11-27T00:00:00Z".into(),
                    end: "2026-11-28T00:00:00Z".into(),
                }],
            }),
            percent: Some(PercentDoc { from: 0.0, to: 5.0 }),
        };
        PolicyDoc {
            name: Some("all".into()),
            stacks: vec![StackDoc {
                name: "blue".into(),
                cluster: Some("blue".into()),
                region: "us".into(),
                labels: vec!["primary".into()],
                weight: 100,
                health_path: Some("/healthz".into()),
            }],
            classify: ClassifyDoc {
                geo: GeoDoc {
                    header: Some("x-geo".into()),
                    countries: BTreeMap::from([("US".into(), "us".into())]),
                    cidrs: vec![CidrDoc {
                        cidr: "10.0.0.0/8".into(),
                        region: "us".into(),
                    }],
                    ambiguous: Some(BTreeMap::from([
                        ("mode".to_string(), "assume".to_string()),
                        ("region".to_string(), "us".to_string()),
                    ])),
                },
                channels: vec![ChannelDoc {
                    name: "app".into(),
                    user_agent_contains: vec!["App".into()],
                    headers: vec!["x-app".into()],
                    path_prefixes: vec!["/app".into()],
                }],
                default_channel: Some("web".into()),
                cohort_header: Some("x-cohort".into()),
                user_key: key_variants(),
                bucket_salt: Some("salt".into()),
            },
            affinity: AffinityDoc {
                cookie: "sy".into(),
                ttl_s: 60,
                secure: true,
                epoch: 2,
            },
            breaker: BreakerDoc {
                enabled: true,
                consecutive_failures: 5,
                error_rate: 0.5,
                window_ms: 1000,
                min_requests: 20,
                open_ms: 1000,
                max_open_ms: 2000,
                half_open_requests: 3,
            },
            rules: balance_variants()
                .into_iter()
                .enumerate()
                .map(|(i, balance)| RuleDoc {
                    id: format!("r{i}"),
                    priority: -1,
                    matches: matches.clone(),
                    route: route(balance),
                })
                .collect(),
            default: route(BalanceDoc::default()),
            debug_header: true,
            kpis: vec![BTreeMap::from([
                ("name".to_string(), "orders".to_string()),
                ("method".to_string(), "POST".to_string()),
                ("path_prefix".to_string(), "/checkout".to_string()),
                ("status".to_string(), "2xx".to_string()),
            ])],
        }
    }

    fn issues(doc: &Value) -> (Vec<String>, Checked) {
        let mut ctx = Ctx::default();
        let checked = check(&mut ctx, doc);
        (ctx.errors.iter().map(|e| e.to_string()).collect(), checked)
    }

    #[test]
    fn the_table_knows_every_field_of_the_document_types() {
        let doc = serde_json::to_value(maximal()).unwrap();
        let (errors, checked) = issues(&doc);
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(checked.repaired_paths.is_empty());
        // Nothing was dropped: the repaired document is the document.
        assert_eq!(checked.repaired.as_ref(), Some(&doc));
        // And the serialised document is one the document types read back.
        serde_json::from_value::<PolicyDoc>(doc.clone()).unwrap();
    }

    /// Fields of the table that the document types do not have yet: the telemetry work
    /// adds `kpis` to `PolicyDoc`. When it lands, add it to [`maximal`] and remove it
    /// here (the test fails until both are done).
    const NOT_YET_IN_THE_DOCUMENT_TYPES: &[&str] = &[];

    /// The values each object or enum shape of the table takes in a document, wherever
    /// it occurs (a route is the default and every rule's): shape key → (where it was
    /// first seen, the shape, its values).
    type Seen<'v> = BTreeMap<String, (String, Shape, Vec<&'v Value>)>;

    fn gather<'v>(path: &str, shape: &Shape, values: &[&'v Value], seen: &mut Seen<'v>) {
        let mut register = |key: String| {
            let entry = seen
                .entry(key)
                .or_insert_with(|| (path.to_string(), *shape, Vec::new()));
            entry.2.extend_from_slice(values);
        };
        match shape {
            Shape::Opt(inner) => {
                let some: Vec<&Value> = values.iter().copied().filter(|v| !v.is_null()).collect();
                gather(path, inner, &some, seen);
            }
            Shape::List(item) => {
                let items: Vec<&Value> = values
                    .iter()
                    .filter_map(|v| v.as_array())
                    .flatten()
                    .collect();
                gather(&format!("{path}[]"), item, &items, seen);
            }
            Shape::Map(item) => {
                let items: Vec<&Value> = values
                    .iter()
                    .filter_map(|v| v.as_object())
                    .flat_map(|m| m.values())
                    .collect();
                gather(&format!("{path}.*"), item, &items, seen);
            }
            Shape::Obj(fields) => {
                register(format!("obj {}", names(fields)));
                gather_fields(path, fields, values, seen);
            }
            Shape::Variant { units, strings } => {
                register(format!("variant {units:?} {strings:?}"));
            }
            Shape::Tagged { tag, variants } => {
                let all: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
                register(format!("tagged {tag} {all:?}"));
                for (name, fields) in *variants {
                    let these: Vec<&Value> = values
                        .iter()
                        .copied()
                        .filter(|v| v.get(*tag).and_then(Value::as_str) == Some(name))
                        .collect();
                    gather_fields(path, fields, &these, seen);
                }
            }
            Shape::Str | Shape::Bool | Shape::Uint(_) | Shape::Int32 | Shape::Num => {}
        }
    }

    fn gather_fields<'v>(path: &str, fields: &[Field], values: &[&'v Value], seen: &mut Seen<'v>) {
        for f in fields {
            let children: Vec<&Value> = values.iter().filter_map(|v| v.get(f.name)).collect();
            gather(&join(path, f.name), &f.shape, &children, seen);
        }
    }

    fn names(fields: &[Field]) -> String {
        fields.iter().map(|f| f.name).collect::<Vec<_>>().join(",")
    }

    /// What the table describes and none of the document's values has: fields as
    /// `path.name`, variants as `path=name`.
    fn unseen(doc: &Value) -> Vec<String> {
        let mut seen = Seen::new();
        gather("", &Obj(POLICY), &[doc], &mut seen);
        let mut out = Vec::new();
        let has = |values: &[&Value], f: &str| values.iter().any(|v| v.get(f).is_some());
        // A shape without values is reported where it hangs (its field is unseen).
        for (path, shape, values) in seen.values().filter(|(_, _, v)| !v.is_empty()) {
            match shape {
                Shape::Obj(fields) => {
                    for f in fields.iter().filter(|f| !has(values, f.name)) {
                        out.push(join(path, f.name));
                    }
                }
                Shape::Variant { units, strings } => {
                    for u in units
                        .iter()
                        .filter(|u| !values.iter().any(|v| v.as_str() == Some(u)))
                    {
                        out.push(format!("{path}={u}"));
                    }
                    for s in strings.iter().filter(|s| !has(values, s)) {
                        out.push(format!("{path}={s}"));
                    }
                }
                Shape::Tagged { tag, variants } => {
                    for (name, fields) in *variants {
                        let these: Vec<&Value> = values
                            .iter()
                            .copied()
                            .filter(|v| v.get(*tag).and_then(Value::as_str) == Some(name))
                            .collect();
                        if these.is_empty() {
                            out.push(format!("{path}.{tag}={name}"));
                        }
                        for f in fields.iter().filter(|f| !has(&these, f.name)) {
                            out.push(format!("{path}.{name}.{}", f.name));
                        }
                    }
                }
                _ => {}
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_document_types_have_every_field_of_the_table() {
        let doc = serde_json::to_value(maximal()).unwrap();
        assert_eq!(
            unseen(&doc),
            NOT_YET_IN_THE_DOCUMENT_TYPES,
            "the table describes these but the maximal document (built from the document \
             types) has none of them: a field the types do not have, or one missing from \
             `maximal()`"
        );
    }

    #[test]
    fn every_problem_is_reported_and_the_rest_repaired() {
        let doc = serde_json::json!({
            "stacks": [ { "name": 5, "regoin": "us" }, "green" ],
            "classify": { "user_key": [ "header", { "heder": "x" }, { "cookie": 1 } ] },
            "breaker": { "window_ms": -1, "error_rate": "high" },
            "rules": [ { "id": "r", "priority": 1.5, "route": { "targets": "blue",
                         "balance": { "mode": "hash" } } } ],
            "default": { "targets": [ { "stack": "blue" } ], "balance": { "key": "user" } }
        });
        let (errors, checked) = issues(&doc);
        let expect = [
            "breaker.error_rate: invalid type: string \"high\", expected a number",
            "breaker.window_ms: invalid value: integer `-1`, expected an integer in 0..=18446744073709551615",
            "classify.user_key[0]: expected exactly one of `client_ip`, {\"header\": …} or {\"cookie\": …}",
            "classify.user_key[1]: unknown variant `heder`, did you mean `header`?",
            "classify.user_key[2].cookie: invalid type: integer `1`, expected a string",
            "default.balance.mode: missing field `mode`",
            "rules[0].priority: invalid type: floating point `1.5`, expected an integer in -2147483648..=2147483647",
            "rules[0].route.balance.key: missing field `key`",
            "rules[0].route.targets: invalid type: string \"blue\", expected a list of objects",
            "stacks[0].name: invalid type: integer `5`, expected a string",
            "stacks[0].regoin: unknown field `regoin`, did you mean `region`?",
            "stacks[0].region: missing field `region`",
            "stacks[1]: invalid type: string \"green\", expected an object",
        ];
        assert_eq!(errors, expect);
        let repaired = checked.repaired.unwrap();
        assert_eq!(
            repaired["stacks"],
            serde_json::json!([ { "name": "_", "region": "_" }, { "name": "_", "region": "_" } ])
        );
        assert_eq!(
            repaired["classify"]["user_key"],
            serde_json::json!(["client_ip", "client_ip", "client_ip"])
        );
        assert_eq!(repaired["breaker"], serde_json::json!({}));
        assert_eq!(
            repaired["rules"][0]["route"],
            serde_json::json!({ "targets": [], "balance": { "mode": "hash", "key": "user" } })
        );
        assert_eq!(
            repaired["default"],
            serde_json::json!({ "targets": [ { "stack": "blue" } ] })
        );
        serde_json::from_value::<PolicyDoc>(repaired).unwrap();
        assert!(!checked
            .repaired_paths
            .contains(&"stacks[0].regoin".to_string()));
    }

    #[test]
    fn a_repaired_path_hides_findings_above_and_below_it_only() {
        let repaired = ["rules[1].match.time.windows[0].start".to_string()];
        for hidden in [
            "rules[1].match.time.windows[0].start",
            "rules[1].match.time.windows[0]",
            "rules[1]",
            "$",
        ] {
            assert!(touches_repaired(hidden, &repaired), "{hidden}");
        }
        for shown in [
            "rules[1].match.time.windows[0].end",
            "rules[1].match.time.windows[0].starts",
            "rules[10]",
            "rules[1].route.targets",
        ] {
            assert!(!touches_repaired(shown, &repaired), "{shown}");
        }
    }

    #[test]
    fn did_you_mean_suggests_near_names_only() {
        let names = ["stacks", "default", "affinity", "rules", "match"];
        assert_eq!(did_you_mean("stack", &names), Some("stacks"));
        assert_eq!(did_you_mean("defualt", &names), Some("default"));
        assert_eq!(did_you_mean("Afinity", &names), Some("affinity"));
        assert_eq!(did_you_mean("matches", &names), Some("match"));
        assert_eq!(did_you_mean("bogus", &names), None);
        assert_eq!(did_you_mean("rule_set", &names), None);
        assert_eq!(edit_distance("regoin", "region"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
