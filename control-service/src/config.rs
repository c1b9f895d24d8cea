//! Server configuration: defaults, then the config file (TOML), then flags.
//!
//! Paths in the config file are relative to the file's own directory; paths given as
//! flags are relative to the working directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::autopilot::AutopilotSettings;
use crate::brain::series::SeriesSettings;
use crate::control::{RetentionSettings, MIN_KEEP_VERSIONS};
use crate::grpc::WatchSettings;
use crate::health::config::{HealthConfig, HealthDoc};
use crate::intakes::{IntakeSettings, IntakeSource};
use crate::replica::ReplicaSettings;
use crate::store::EtcdConfig;

pub const DEFAULT_GRPC: &str = "127.0.0.1:18000";
pub const DEFAULT_HTTP: &str = "127.0.0.1:18080";
pub const DEFAULT_DATA_DIR: &str = "switchyard-data";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where versions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded, crash-safe database in the data directory (default).
    Redb,
    /// In memory: lost on exit. For tests and demos only.
    Memory,
    /// An etcd cluster (`--etcd-endpoints`): survives the loss of this machine.
    Etcd,
}

/// Flags of `switchyard-control serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file (TOML). Flags override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the store [default: ./switchyard-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Store backend [default: redb].
    #[arg(long, value_enum)]
    pub store: Option<StoreKind>,
    /// etcd client URLs, comma-separated, for `--store etcd`
    /// [default: http://127.0.0.1:2379].
    #[arg(long, env = "SWITCHYARD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd [default: /switchyard/].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// This replica's name among replicas on one etcd (status, logs, the leadership key)
    /// [default: HOSTNAME-PID].
    #[arg(long, env = "SWITCHYARD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Lease of the replicas' leadership in seconds: a leader that stops renewing it is
    /// replaced this long after (`--store etcd`) [default: 10].
    #[arg(long)]
    pub lease_ttl_secs: Option<u64>,
    /// gRPC listen address (port 0 = any free port) [default: 127.0.0.1:18000].
    #[arg(long)]
    pub grpc: Option<SocketAddr>,
    /// HTTP listen address [default: 127.0.0.1:18080].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Policy applied as the first version when the store is empty.
    #[arg(long)]
    pub bootstrap_policy: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `switchyard_control=debug` [default: info; RUST_LOG wins].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve without authentication: anyone who reaches the ports may change routing.
    /// For development on a private machine only (docs/security.md).
    #[arg(long)]
    pub no_auth: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// `[replica]`: this replica among several on one etcd (docs/operations.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaDoc {
    /// Name in status, logs and the leadership key (default `hostname-pid`).
    pub id: Option<String>,
    /// Leadership lease in seconds (default 10).
    pub lease_ttl_secs: Option<u64>,
}

/// `[auth]`: credentials on the gRPC and HTTP APIs (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDoc {
    /// Require credentials (default true). `false` is for development only.
    pub enabled: Option<bool>,
}

/// Resolved authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Every call needs a credential whose role allows it (except the open endpoints).
    pub enabled: bool,
}

/// `[autopilot]`: how often the brain ticks, and the guardrails every traffic change
/// must pass (paper §12.2). Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutopilotDoc {
    /// Tick of the rollout engine (default 1000).
    pub tick_ms: Option<u64>,
    /// Most traffic (percent of a scope) moved per window without approval (default 20).
    pub max_shift_percent: Option<u32>,
    /// The rate limit's sliding window (default 900 = 15 min).
    pub shift_window_s: Option<u64>,
    /// A single change moving more than this needs a human approver (default 20).
    pub approval_above_percent: Option<u32>,
    /// Stacks labelled primary: any change touching one needs a human approver.
    pub primary_stacks: Option<Vec<String>>,
    /// How long a permit holds the one-change lease unless recorded (default 60).
    pub lease_s: Option<u64>,
    /// Incidents: persistence re-check this long after the first trigger (default 180000).
    pub incident_validate_ms: Option<u64>,
    /// Incidents: judge recovery this long after an action (default 300000).
    pub incident_verify_ms: Option<u64>,
    /// Incidents: no other action on the touched stacks for this long (default 900000).
    pub incident_freeze_ms: Option<u64>,
    /// Incidents: share of the delta stack's traffic a first proposal moves (default 50).
    pub incident_shift_percent: Option<u8>,
    /// Incidents: a deployment this long before the onset is a suspect (default 1800000).
    pub incident_deploy_lookback_ms: Option<u64>,
    /// Incidents: proposals before it leaves the incident to a human (default 3).
    pub incident_max_attempts: Option<u32>,
    /// Group per stack (stacks of a group are compared with each other; default: the
    /// default route's targets form group `default`, every other stack its own group).
    pub incident_groups: Option<BTreeMap<String, String>>,
    /// Known capacity per stack in requests/s (default: its recent peak).
    pub incident_capacity_rps: Option<BTreeMap<String, f64>>,
    /// Detection: SLO error rate (default 0.001).
    pub slo_error_rate: Option<f64>,
    /// Detection: SLO p99 latency (default 500).
    pub slo_p99_ms: Option<f64>,
    /// Detection: anomalous windows in a row that confirm a finding (default 3).
    pub detect_confirm_windows: Option<u32>,
    /// Detection: fewest requests in a window to judge it (default 50).
    pub detect_min_requests: Option<u64>,
    /// Detection: trend projections reaching the SLO within this long warn (default 1800000).
    pub detect_trend_horizon_ms: Option<u64>,
    /// Saturation scrapes: how often each source is polled (default 5000).
    pub saturation_every_ms: Option<u64>,
    /// Saturation scrapes per stack (`[autopilot.saturation.<stack>]`), fed to the
    /// detector's saturation input (docs/detection.md).
    pub saturation: Option<BTreeMap<String, SaturationDoc>>,
}

/// `[autopilot.saturation.<stack>]`: a plain-HTTP URL and exactly one of a JSON
/// pointer or a Prometheus text metric name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaturationDoc {
    pub url: String,
    pub pointer: Option<String>,
    pub metric: Option<String>,
}

impl AutopilotDoc {
    /// The settings, or every problem of the saturation sources.
    pub fn settings(self) -> Result<AutopilotSettings, ConfigError> {
        let mut s = AutopilotSettings::default();
        let mut problems = Vec::new();
        for (stack, d) in self.saturation.clone().unwrap_or_default() {
            match crate::autopilot::saturation::SaturationSource::new(
                &stack, &d.url, d.pointer, d.metric,
            ) {
                Ok(src) => s.saturation.push(src),
                Err(e) => problems.push(format!("saturation.{e}")),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Autopilot { problems });
        }
        if let Some(ms) = self.saturation_every_ms {
            s.saturation_every = Duration::from_millis(ms.clamp(100, 3_600_000));
        }
        if let Some(ms) = self.tick_ms {
            s.tick = Duration::from_millis(ms.clamp(10, 60_000));
        }
        let g = &mut s.guard;
        if let Some(v) = self.max_shift_percent {
            g.max_shift_percent = v.min(100);
        }
        if let Some(v) = self.shift_window_s {
            g.window_ms = v * 1000;
        }
        if let Some(v) = self.approval_above_percent {
            g.approval_above_percent = v.min(100);
        }
        if let Some(v) = self.primary_stacks {
            g.primary_stacks = v.into_iter().collect();
        }
        if let Some(v) = self.lease_s {
            g.lease_ms = v * 1000;
        }
        let w = &mut s.incidents.workflow;
        if let Some(v) = self.incident_validate_ms {
            w.validate_ms = v;
        }
        if let Some(v) = self.incident_verify_ms {
            w.verify_ms = v;
        }
        if let Some(v) = self.incident_freeze_ms {
            w.freeze_ms = v;
        }
        if let Some(v) = self.incident_shift_percent {
            w.shift_percent = v.clamp(1, 100);
        }
        if let Some(v) = self.incident_deploy_lookback_ms {
            w.deploy_lookback_ms = v;
            s.incidents.detector.deploy_lookback_ms = v;
        }
        if let Some(v) = self.incident_max_attempts {
            w.max_attempts = v;
        }
        if let Some(v) = self.incident_groups {
            s.incidents.groups = v;
        }
        if let Some(v) = self.incident_capacity_rps {
            s.incidents.capacity_rps = v;
        }
        let d = &mut s.incidents.detector;
        if let Some(v) = self.slo_error_rate {
            d.slo.error_rate = v;
        }
        if let Some(v) = self.slo_p99_ms {
            d.slo.p99_ms = v;
        }
        if let Some(v) = self.detect_confirm_windows {
            d.confirm_windows = v.max(1);
        }
        if let Some(v) = self.detect_min_requests {
            d.min_requests = v;
        }
        if let Some(v) = self.detect_trend_horizon_ms {
            d.trend_horizon_ms = v;
        }
        Ok(s)
    }
}

/// `[degraded]`: what the control service watches of degraded mode
/// (docs/degraded-mode.md). Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradedDoc {
    /// The intakes whose queues status shows: `[{ cluster = "intake_us", url =
    /// "http://127.0.0.1:8090/metrics" }]`.
    pub intakes: Option<Vec<IntakeDoc>>,
    /// Time between two scrapes of one intake (default 5000, 100..=600000).
    pub scrape_every_ms: Option<u64>,
    /// Bound on one scrape (default 2000, at most `scrape_every_ms`).
    pub scrape_timeout_ms: Option<u64>,
}

/// One intake: the cluster a route's queue fallback names and its Prometheus metrics URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeDoc {
    pub cluster: String,
    pub url: String,
}

impl DegradedDoc {
    /// The scrape settings, or every problem with its field path.
    pub fn settings(&self) -> Result<IntakeSettings, ConfigError> {
        let mut s = IntakeSettings::default();
        let mut problems = Vec::new();
        for (i, d) in self.intakes.iter().flatten().enumerate() {
            match IntakeSource::new(&d.cluster, &d.url) {
                Ok(src) if s.sources.iter().any(|o| o.cluster == src.cluster) => problems.push(
                    format!("intakes[{i}].cluster: {:?} is listed twice", src.cluster),
                ),
                Ok(src) => s.sources.push(src),
                Err(e) => problems.push(format!("intakes[{i}].{e}")),
            }
        }
        if let Some(ms) = self.scrape_every_ms {
            if (100..=600_000).contains(&ms) {
                s.every = Duration::from_millis(ms);
            } else {
                problems.push(format!(
                    "scrape_every_ms: {ms} must be between 100 and 600000"
                ));
            }
        }
        if let Some(ms) = self.scrape_timeout_ms {
            if ms == 0 {
                problems.push("scrape_timeout_ms: must be positive".into());
            }
            s.timeout = Duration::from_millis(ms);
        }
        s.timeout = s.timeout.min(s.every);
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError::Degraded { problems })
        }
    }
}

/// The config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub store: Option<StoreKind>,
    /// etcd client URLs (`store = "etcd"`).
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_prefix: Option<String>,
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// `false` disables HTTP.
    pub http_enabled: Option<bool>,
    pub bootstrap_policy: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    /// How long a new Watch stream may take to send its first message.
    pub watch_first_message_timeout_ms: Option<u64>,
    /// How long graceful shutdown may take before the process exits anyway.
    pub shutdown_grace_ms: Option<u64>,
    /// Active health checks and the fast path (`[health]`, `[[health.checks]]`).
    pub health: Option<HealthDoc>,
    /// The brain's executor and guardrails (`[autopilot]`).
    pub autopilot: Option<AutopilotDoc>,
    /// Length of a telemetry window of the brain's series (default 10000).
    pub series_window_ms: Option<u64>,
    /// How long closed windows are kept in the store (default 604800 = 7 days).
    pub series_retention_s: Option<u64>,
    /// How long after its end a window still takes late batches (default 3000).
    pub series_grace_ms: Option<u64>,
    /// Credentials (`[auth]`).
    pub auth: Option<AuthDoc>,
    /// This replica among several on one etcd (`[replica]`).
    pub replica: Option<ReplicaDoc>,
    /// The intakes of degraded mode (`[degraded]`).
    pub degraded: Option<DegradedDoc>,
    /// TLS and client certificates (`[tls]`, `[[tls.identity]]`).
    pub tls: Option<crate::tls::TlsDoc>,
    /// Connection admission on the listeners (`[limits]`).
    pub limits: Option<LimitsDoc>,
    /// Versions kept and etcd compaction (`[retention]`).
    pub retention: Option<RetentionDoc>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub etcd: EtcdConfig,
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    pub bootstrap_policy: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub watch: WatchSettings,
    pub shutdown_grace: Duration,
    /// Health checks and the fast path; `None` when the file has no `[health]` section.
    pub health: Option<HealthConfig>,
    /// The brain's tick and guardrails.
    pub autopilot: AutopilotSettings,
    /// Windows and retention of the brain's telemetry series.
    pub series: SeriesSettings,
    /// Authentication and authorisation.
    pub auth: AuthSettings,
    /// This replica's id and leadership lease (used with `store = "etcd"`).
    pub replica: ReplicaSettings,
    /// The intakes whose queues status shows (`[degraded] intakes`).
    pub intakes: IntakeSettings,
    /// TLS on both listeners (and client certificates); `None`: plain text.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Connection limits and the first-byte deadline of both listeners.
    pub limits: crate::net::Limits,
    /// Versions kept and etcd compaction (`[retention]`).
    pub retention: RetentionSettings,
}

impl ServeConfig {
    /// Defaults for an in-process server in `data_dir` on ephemeral ports (tests). Without
    /// authentication: suites about something else call it without tokens; suites about
    /// access set `auth.enabled`.
    pub fn ephemeral(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            store: StoreKind::Redb,
            etcd: EtcdConfig::default(),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            bootstrap_policy: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            watch: WatchSettings::default(),
            shutdown_grace: Duration::from_secs(5),
            health: None,
            autopilot: AutopilotSettings::default(),
            series: SeriesSettings::default(),
            auth: AuthSettings { enabled: false },
            replica: ReplicaSettings::default(),
            intakes: IntakeSettings::default(),
            tls: None,
            limits: crate::net::Limits::default(),
            retention: RetentionSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid [autopilot] section:\n  {}", .problems.join("\n  "))]
    Autopilot { problems: Vec<String> },
    #[error("{path}: invalid [health] section:\n  {}", .problems.join("\n  "))]
    Health {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("invalid [degraded] section:\n  {}", .problems.join("\n  "))]
    Degraded { problems: Vec<String> },
    #[error("invalid [tls] settings:\n  {}", .problems.join("\n  "))]
    Tls { problems: Vec<String> },
    #[error("invalid [limits] section:\n  {}", .problems.join("\n  "))]
    Limits { problems: Vec<String> },
    #[error("{0}")]
    Invalid(String),
}

/// Resolve flags over the config file over defaults.
pub fn resolve(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
    let (file, base) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (file, base)
        }
        None => (FileConfig::default(), PathBuf::new()),
    };
    let from_file = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
    let default_addr = |s: &str| {
        s.parse::<SocketAddr>()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let health =
        match &file.health {
            None => None,
            Some(doc) => Some(crate::health::config::compile(doc).map_err(|problems| {
                ConfigError::Health {
                    path: args.config.clone().unwrap_or_default(),
                    problems,
                }
            })?),
        };
    let http_enabled = !args.no_http && file.http_enabled.unwrap_or(true);
    let mut watch = WatchSettings::default();
    if let Some(ms) = file.watch_first_message_timeout_ms {
        watch.first_message_timeout = Duration::from_millis(ms);
    }
    let series = series_settings(&file)?;
    let replica = replica_settings(args, file.replica.clone().unwrap_or_default())?;
    let intakes = file
        .degraded
        .as_ref()
        .map(DegradedDoc::settings)
        .transpose()?
        .unwrap_or_default();
    let tls = crate::tls::resolve(file.tls.as_ref(), &args.tls, &base)
        .map_err(|problems| ConfigError::Tls { problems })?;
    let cfg = ServeConfig {
        data_dir: args
            .data_dir
            .clone()
            .or_else(|| from_file(&file.data_dir))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        store: args.store.or(file.store).unwrap_or(StoreKind::Redb),
        etcd: {
            let mut e = EtcdConfig::default();
            if !args.etcd_endpoints.is_empty() {
                e.endpoints = args.etcd_endpoints.clone();
            } else if let Some(eps) = file.etcd_endpoints {
                e.endpoints = eps;
            }
            if let Some(p) = args.etcd_prefix.clone().or(file.etcd_prefix) {
                e.namespace = p;
            }
            e
        },
        grpc: args
            .grpc
            .or(file.grpc)
            .unwrap_or_else(|| default_addr(DEFAULT_GRPC)),
        http: http_enabled.then(|| {
            args.http
                .or(file.http)
                .unwrap_or_else(|| default_addr(DEFAULT_HTTP))
        }),
        bootstrap_policy: args
            .bootstrap_policy
            .clone()
            .or_else(|| from_file(&file.bootstrap_policy)),
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        log_level: args
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into()),
        watch,
        shutdown_grace: Duration::from_millis(file.shutdown_grace_ms.unwrap_or(5_000)),
        health,
        series,
        autopilot: file
            .autopilot
            .map(AutopilotDoc::settings)
            .transpose()?
            .unwrap_or_default(),
        auth: AuthSettings {
            enabled: !args.no_auth && file.auth.and_then(|a| a.enabled).unwrap_or(true),
        },
        replica,
        intakes,
        tls,
        limits: file
            .limits
            .as_ref()
            .map(LimitsDoc::settings)
            .transpose()?
            .unwrap_or_default(),
        retention: file
            .retention
            .as_ref()
            .map(RetentionDoc::settings)
            .transpose()?
            .unwrap_or_default(),
    };
    check_plaintext(&cfg, args.tls.insecure_plaintext)?;
    Ok(cfg)
}

/// `[limits]`: connection admission on the gRPC and HTTP listeners (control-service/README.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    /// Connections the gRPC listener holds at once (default 8192); more are closed at once.
    pub grpc_max_connections: Option<usize>,
    /// Connections the HTTP listener holds at once (default 1024).
    pub http_max_connections: Option<usize>,
    /// A new connection must send its first byte (plain) or finish its TLS handshake
    /// within this (default 10000).
    pub first_byte_timeout_ms: Option<u64>,
}

/// Longest first-byte deadline: 10 minutes.
const MAX_FIRST_BYTE_TIMEOUT_MS: u64 = 600_000;

impl LimitsDoc {
    /// Every problem, each naming its field.
    pub fn settings(&self) -> Result<crate::net::Limits, ConfigError> {
        let d = crate::net::Limits::default();
        let max = crate::net::MAX_CONNECTIONS;
        let mut problems = Vec::new();
        let mut limit = |key: &str, v: Option<usize>, default: usize| match v {
            Some(n) if !(1..=max).contains(&n) => {
                problems.push(format!("limits.{key} {n}: between 1 and {max}"));
                default
            }
            v => v.unwrap_or(default),
        };
        let grpc = limit(
            "grpc_max_connections",
            self.grpc_max_connections,
            d.grpc_max_connections,
        );
        let http = limit(
            "http_max_connections",
            self.http_max_connections,
            d.http_max_connections,
        );
        let first_byte = match self.first_byte_timeout_ms {
            Some(ms) if !(100..=MAX_FIRST_BYTE_TIMEOUT_MS).contains(&ms) => {
                problems.push(format!(
                    "limits.first_byte_timeout_ms {ms}: between 100 and {MAX_FIRST_BYTE_TIMEOUT_MS}"
                ));
                d.first_byte_timeout
            }
            Some(ms) => Duration::from_millis(ms),
            None => d.first_byte_timeout,
        };
        if !problems.is_empty() {
            return Err(ConfigError::Limits { problems });
        }
        Ok(crate::net::Limits {
            grpc_max_connections: grpc,
            http_max_connections: http,
            first_byte_timeout: first_byte,
        })
    }
}

/// With authentication on, tokens cross the network: plain text is for loopback only,
/// unless `--insecure-plaintext` says someone else encrypts (a TLS-terminating proxy).
fn check_plaintext(cfg: &ServeConfig, insecure: bool) -> Result<(), ConfigError> {
    if !cfg.auth.enabled || cfg.tls.is_some() || insecure {
        return Ok(());
    }
    let exposed: Vec<String> = [("grpc", Some(cfg.grpc)), ("http", cfg.http)]
        .into_iter()
        .filter_map(|(k, a)| {
            a.filter(|a| !a.ip().is_loopback())
                .map(|a| format!("{k} {a}"))
        })
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{} is not a loopback address: with authentication on, credentials would cross the \
         network in plain text. Configure [tls] (cert, key; --tls-cert, --tls-key), or pass \
         --insecure-plaintext if a TLS-terminating proxy sits in front (docs/security.md)",
        exposed.join(" and ")
    )))
}

/// Longest leadership lease: a dead leader's work would wait this long to resume.
const MAX_LEASE_TTL_SECS: u64 = 300;

fn replica_settings(args: &ServeArgs, doc: ReplicaDoc) -> Result<ReplicaSettings, ConfigError> {
    let mut s = ReplicaSettings::default();
    if let Some(id) = args.replica_id.clone().or(doc.id) {
        let id = id.trim().to_string();
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(ConfigError::Invalid(format!(
                "replica.id {id:?}: 1-128 characters of [A-Za-z0-9._:-]"
            )));
        }
        s.id = id;
    }
    if let Some(ttl) = args.lease_ttl_secs.or(doc.lease_ttl_secs) {
        if !(1..=MAX_LEASE_TTL_SECS).contains(&ttl) {
            return Err(ConfigError::Invalid(format!(
                "replica.lease_ttl_secs {ttl}: between 1 and {MAX_LEASE_TTL_SECS}"
            )));
        }
        s.lease_ttl = Duration::from_secs(ttl);
    }
    Ok(s)
}

fn series_settings(file: &FileConfig) -> Result<SeriesSettings, ConfigError> {
    let d = SeriesSettings::default();
    let s = SeriesSettings {
        window_ms: file.series_window_ms.unwrap_or(d.window_ms),
        retention_ms: file
            .series_retention_s
            .map_or(d.retention_ms, |s| s.saturating_mul(1_000)),
        grace_ms: file.series_grace_ms.unwrap_or(d.grace_ms),
    };
    if s.window_ms < 100 || s.window_ms > 3_600_000 {
        return Err(ConfigError::Invalid(
            "series_window_ms must be between 100 and 3600000".into(),
        ));
    }
    if s.retention_ms < s.window_ms {
        return Err(ConfigError::Invalid(
            "series_retention_s must cover at least one window".into(),
        ));
    }
    Ok(s)
}

/// `[retention]`: how much history the store keeps (docs/operations.md "Store growth").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDoc {
    /// Newest versions kept (default 1000, at least 10; 0 keeps every version).
    pub keep_versions: Option<u64>,
    /// etcd only: seconds between compactions of etcd's revision history (default 300,
    /// 1..=86400; 0: never, etcd's own `--auto-compaction-*` does it).
    pub etcd_compact_every_s: Option<u64>,
}

/// Longest interval between two etcd compactions.
const MAX_COMPACT_EVERY_S: u64 = 86_400;

impl RetentionDoc {
    /// The settings, or every problem with its field.
    pub fn settings(&self) -> Result<RetentionSettings, ConfigError> {
        let mut s = RetentionSettings::default();
        let mut problems = Vec::new();
        match self.keep_versions {
            Some(n) if n != 0 && n < MIN_KEEP_VERSIONS => problems.push(format!(
                "retention.keep_versions {n}: at least {MIN_KEEP_VERSIONS} (or 0 to keep every version)"
            )),
            Some(n) => s.keep_versions = n,
            None => {}
        }
        match self.etcd_compact_every_s {
            Some(0) => s.compact_every = None,
            Some(n) if n > MAX_COMPACT_EVERY_S => problems.push(format!(
                "retention.etcd_compact_every_s {n}: at most {MAX_COMPACT_EVERY_S} (or 0 for never)"
            )),
            Some(n) => s.compact_every = Some(Duration::from_secs(n)),
            None => {}
        }
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests;
