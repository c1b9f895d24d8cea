//! `cargo run -p switchyard-filter --example validate -- policy.json`: validate a policy
//! offline with the filter's own code and print every error and warning.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: validate POLICY.json");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    match switchyard_filter::policy::validate_json(&text) {
        Ok(v) => {
            for w in &v.warnings {
                println!("warning: {w}");
            }
            println!(
                "ok: {} stacks, {} rules",
                v.policy.stacks.len(),
                v.policy.rules.len()
            );
        }
        Err(e) => {
            for err in &e.errors {
                println!("error: {err}");
            }
            std::process::exit(1);
        }
    }
}
