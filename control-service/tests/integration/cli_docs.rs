//! The CLI reference in control-service/README.md is generated from the binary's own
//! `--help`, and this test fails when the two differ. Regenerate with:
//!
//!     UPDATE_CLI_DOCS=1 cargo test -p switchyard-control --test integration cli_docs

use std::process::Command;

use clap::CommandFactory;
use switchyard_control::cli::Cli;

const BEGIN: &str = "<!-- BEGIN GENERATED CLI REFERENCE: UPDATE_CLI_DOCS=1 cargo test -p switchyard-control --test integration cli_docs -->";
const END: &str = "<!-- END GENERATED CLI REFERENCE -->";

/// Every command path: `[]`, `["policy"]`, `["policy", "apply"]`, …
fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for sub in cmd.get_subcommands() {
        let mut p = prefix.clone();
        p.push(sub.get_name().to_string());
        paths(sub, p, out);
    }
}

/// `switchyard PATH --help`, as the binary prints it, in a neutral environment.
fn help(path: &[String]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for k in ["SWITCHYARD_SERVER", "SWITCHYARD_ACTOR", "COLUMNS"] {
        c.env_remove(k);
    }
    let o = c.args(path).arg("--help").output().expect("run switchyard");
    assert!(o.status.success(), "{path:?} --help");
    String::from_utf8(o.stdout).expect("utf-8 help")
}

fn generated() -> String {
    let mut all = Vec::new();
    paths(&Cli::command(), Vec::new(), &mut all);
    let mut s = String::new();
    for path in all {
        let name = std::iter::once("switchyard".to_string())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        s.push_str(&format!(
            "#### `{name}`\n\n```text\n{}\n```\n\n",
            help(&path).trim_end()
        ));
    }
    s
}

#[test]
fn readme_cli_reference_matches_the_binary() {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(readme_path).unwrap();
    let begin = readme.find(BEGIN).expect("README has the BEGIN marker") + BEGIN.len();
    let end = readme.find(END).expect("README has the END marker");
    let want = format!("\n\n{}", generated());
    if std::env::var_os("UPDATE_CLI_DOCS").is_some() {
        let updated = format!("{}{want}{}", &readme[..begin], &readme[end..]);
        std::fs::write(readme_path, updated).unwrap();
        return;
    }
    assert!(
        readme[begin..end] == want,
        "control-service/README.md's CLI reference differs from the binary's --help; \
         regenerate with: UPDATE_CLI_DOCS=1 cargo test -p switchyard-control --test integration cli_docs"
    );
}

#[test]
fn every_subcommand_and_flag_is_in_the_reference() {
    // The flags the issue found missing from the hand-written reference.
    let text = generated();
    for flag in ["--expect-version", "--reason", "--comment", "--deadline"] {
        assert!(text.contains(flag), "{flag}");
    }
}
