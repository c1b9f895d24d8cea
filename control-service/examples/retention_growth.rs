//! Store growth with and without version retention, side by side: two real
//! `switchyard-control` processes on redb, one keeping every version
//! (`[retention] keep_versions = 0`), one keeping the newest `--keep`; the same policy
//! pushes go to both, interleaved (A B, then B A). Prints the redb file size and the
//! process RSS of each at checkpoints.
//!
//! ```text
//! cargo build -p switchyard-control --bins --examples
//! target/debug/examples/retention_growth --pushes 3000 --keep 100
//! ```
//!
//! The final sample is taken after the leader's next pruning pass (it runs every 10 s).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use switchyard_control::proto::v1;

#[allow(dead_code)] // cpu_ms is for the other load programs
mod support;
use support::rss_kib;

#[derive(Parser, Debug)]
#[command(about = "Store growth with retention on and off, side by side")]
struct Args {
    /// Policy pushes to each server.
    #[arg(long, default_value_t = 3000)]
    pushes: usize,
    /// Versions the retention server keeps.
    #[arg(long, default_value_t = 100)]
    keep: u64,
    /// Stacks in the generated policy (8 gives a ~1 KB document).
    #[arg(long, default_value_t = 8)]
    stacks: usize,
    /// Samples taken during the run (plus the final one).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// The server binary [default: ../switchyard-control next to this example].
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn policy(stacks: usize, name: &str) -> String {
    let defs: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"name":"stack-{i}","region":"region-{}"}}"#, i % 3))
        .collect();
    let targets: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"stack":"stack-{i}","weight":{}}}"#, 10 + i))
        .collect();
    format!(
        r#"{{"name":"{name}","stacks":[{}],"rules":[{{"id":"mobile","priority":1,"match":{{"path_prefixes":["/m/"]}},"route":{{"targets":[{}],"affinity":true}}}}],"default":{{"targets":[{}]}}}}"#,
        defs.join(","),
        targets.join(","),
        targets.join(",")
    )
}

struct Side {
    label: &'static str,
    server: support::Server,
    client: v1::policies_client::PoliciesClient<tonic::transport::Channel>,
}

impl Side {
    async fn start(args: &Args, label: &'static str, keep: u64) -> Side {
        let cfg = std::env::temp_dir().join(format!(
            "switchyard-retention-{label}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&cfg, format!("[retention]\nkeep_versions = {keep}\n")).expect("config");
        let server = support::start_server(
            args.server_bin.clone(),
            None,
            &format!("retention-{label}"),
            &["--no-auth", "--config", cfg.to_str().expect("utf-8 path")],
        );
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Side {
            label,
            server,
            client: v1::policies_client::PoliciesClient::new(channel),
        }
    }

    async fn push(&mut self, doc: &str) -> u64 {
        self.client
            .apply(v1::ApplyPolicyRequest {
                policy_json: doc.to_string(),
                actor: "retention-growth".into(),
                ..Default::default()
            })
            .await
            .expect("apply")
            .into_inner()
            .version
    }

    async fn sample(&mut self) -> (u64, u64, usize) {
        let file = std::fs::metadata(self.server.dir.join("switchyard.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        let kept = self
            .client
            .history(v1::HistoryRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner()
            .versions
            .len();
        (file, rss_kib(self.server.child.id()), kept)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut off = Side::start(&args, "off", 0).await;
    let mut on = Side::start(&args, "on", args.keep).await;
    println!(
        "{} pushes of a {}-byte policy to each; retention on keeps {} versions",
        args.pushes,
        policy(args.stacks, "p-000000").len(),
        args.keep
    );
    println!("| pushes | side | versions listed (≤1000) | redb file (bytes) | RSS (kB) |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    let every = (args.pushes / args.samples.max(1)).max(1);
    for i in 1..=args.pushes {
        let doc = policy(args.stacks, &format!("p-{i:06}"));
        let (first, second) = if i % 2 == 0 {
            (&mut off, &mut on)
        } else {
            (&mut on, &mut off)
        };
        first.push(&doc).await;
        second.push(&doc).await;
        if i % every == 0 && i != args.pushes {
            for side in [&mut off, &mut on] {
                let (file, rss, kept) = side.sample().await;
                println!("| {i} | {} | {kept} | {file} | {rss} |", side.label);
            }
        }
    }
    // Let the retention server's next pruning pass (every 10 s) run.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for side in [&mut off, &mut on] {
        let (file, rss, kept) = side.sample().await;
        println!(
            "| {} (+11 s) | {} | {kept} | {file} | {rss} |",
            args.pushes, side.label
        );
    }
}
