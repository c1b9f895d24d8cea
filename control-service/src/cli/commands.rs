//! One function per verb group (policy, stacks, status, watch): build the request, make
//! the call, hand the answer to [`super::output`]. Failures are returned, not printed.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use super::args::{
    AuditCmd, Command, EventsCmd, IncidentsCmd, PolicyCmd, RolloutCmd, StacksCmd, TokensCmd,
};
use super::context::Ctx;
use super::output::{self, Failure};
use crate::model::now_unix_ms;
use crate::proto::{self, v1};
use crate::validate;

/// Run the parsed command.
pub async fn run(ctx: &mut Ctx<'_>) -> Result<(), Failure> {
    match &ctx.cli.command {
        Command::Policy(cmd) => policy(ctx, cmd).await,
        Command::Stacks(cmd) => stacks(ctx, cmd).await,
        Command::Status => status(ctx).await,
        Command::Audit(cmd) => audit(ctx, cmd).await,
        Command::Rollout(cmd) => rollout(ctx, cmd).await,
        Command::Incidents(cmd) => incidents(ctx, cmd).await,
        Command::Events(cmd) => events(ctx, cmd).await,
        Command::Tokens(cmd) => tokens(ctx, cmd).await,
        Command::Watch {
            node_id,
            last_applied,
            count,
        } => watch(ctx, node_id, *last_applied, *count).await,
    }
}

fn read_file(path: &Path) -> Result<String, Failure> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::rejected(format!("reading stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::rejected(format!("reading {}: {e}", path.display())))
}

async fn policy(ctx: &mut Ctx<'_>, cmd: &PolicyCmd) -> Result<(), Failure> {
    let json_out = ctx.json();
    match cmd {
        PolicyCmd::Validate { file, offline } => {
            let doc = read_file(file)?;
            let (stacks, warnings) = if *offline {
                let ok = validate::check(&doc).map_err(Failure::invalid_policy)?;
                let warnings: Vec<v1::FieldIssue> =
                    ok.warnings.iter().map(proto::field_issue).collect();
                (
                    ok.stacks.into_iter().map(|s| s.name).collect::<Vec<_>>(),
                    warnings,
                )
            } else {
                let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
                let r = client
                    .validate(v1::ValidatePolicyRequest {
                        policy_json: doc,
                        full_report: true,
                    })
                    .await
                    .map_err(Failure::from_policy_call)?
                    .into_inner();
                if !r.valid {
                    return Err(Failure::invalid_policy(
                        r.errors
                            .into_iter()
                            .map(|i| validate::Issue {
                                path: i.path,
                                message: i.message,
                            })
                            .collect(),
                    ));
                }
                (r.stacks, r.warnings)
            };
            if json_out {
                output::print_json(
                    &json!({ "valid": true, "stacks": stacks, "warnings": warnings }),
                );
            } else {
                output::print_warnings(&warnings);
                println!("valid: {} stack(s): {}", stacks.len(), stacks.join(", "));
            }
            Ok(())
        }
        PolicyCmd::Apply { file, change } => {
            let doc = read_file(file)?;
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .apply(v1::ApplyPolicyRequest {
                    policy_json: doc,
                    actor: ctx.actor(),
                    comment: change.comment.clone(),
                    expected_version: change.expect_version,
                })
                .await
                .map_err(Failure::from_policy_call)?
                .into_inner();
            output::print_change(json_out, &r);
            Ok(())
        }
        PolicyCmd::Get { version } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .get(v1::GetPolicyRequest { version: *version })
                .await?
                .into_inner();
            if json_out {
                let policy: Value =
                    serde_json::from_str(&r.policy_json).unwrap_or(Value::String(r.policy_json));
                output::print_json(&json!({ "info": r.info, "policy": policy }));
            } else {
                if let Some(i) = &r.info {
                    eprintln!(
                        "# version {} (policy set at v{}: {} [{}])",
                        i.version,
                        i.policy_version,
                        output::display_name(&i.policy_name),
                        i.policy_digest
                    );
                }
                // The document itself on stdout, so `policy get > p.json` round-trips.
                println!("{}", r.policy_json.trim_end());
            }
            Ok(())
        }
        PolicyCmd::History { limit, before } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .history(v1::HistoryRequest {
                    limit: *limit,
                    before_version: *before,
                })
                .await?
                .into_inner();
            if json_out {
                output::print_json(&r);
            } else {
                output::print_history(&r);
            }
            Ok(())
        }
        PolicyCmd::Rollback { version, change } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .rollback(v1::RollbackRequest {
                    to_version: *version,
                    actor: ctx.actor(),
                    comment: change.comment.clone(),
                    expected_version: change.expect_version,
                })
                .await
                .map_err(Failure::from_policy_call)?
                .into_inner();
            output::print_change(json_out, &r);
            Ok(())
        }
    }
}

async fn stacks(ctx: &mut Ctx<'_>, cmd: &StacksCmd) -> Result<(), Failure> {
    let json_out = ctx.json();
    let mut client = v1::stacks_client::StacksClient::new(ctx.channel().await?);
    let actor = ctx.actor();
    let reason_req = |stack: &str, reason: &str| v1::StackReasonRequest {
        stack: stack.to_string(),
        reason: reason.to_string(),
        actor: actor.clone(),
    };
    let r = match cmd {
        StacksCmd::List => {
            let r = client.list(v1::ListStacksRequest {}).await?.into_inner();
            if json_out {
                output::print_json(&r);
            } else {
                let weights = policy_weights(ctx).await;
                output::print_stacks(&r, weights.as_ref(), None);
            }
            return Ok(());
        }
        StacksCmd::Weight {
            stack,
            percent,
            reason,
        } => {
            client
                .set_weight(v1::SetWeightRequest {
                    stack: stack.clone(),
                    weight_percent: *percent,
                    reason: reason.clone(),
                    actor: actor.clone(),
                })
                .await?
        }
        StacksCmd::Drain {
            stack,
            deadline,
            reason,
        } => {
            client
                .drain(v1::DrainStackRequest {
                    stack: stack.clone(),
                    reason: reason.clone(),
                    actor: actor.clone(),
                    deadline_seconds: deadline.unwrap_or(0),
                })
                .await?
        }
        StacksCmd::Evacuate { stack, reason } => client.evacuate(reason_req(stack, reason)).await?,
        StacksCmd::Undrain { stack, reason } => client.undrain(reason_req(stack, reason)).await?,
        StacksCmd::Unhealthy { stack, reason } => {
            client.mark_unhealthy(reason_req(stack, reason)).await?
        }
        StacksCmd::Healthy { stack, reason } => {
            client.mark_healthy(reason_req(stack, reason)).await?
        }
        StacksCmd::Register {
            stack,
            endpoint,
            comment,
        } => {
            client
                .register(v1::RegisterStackRequest {
                    stack: stack.clone(),
                    endpoint: endpoint.clone(),
                    actor: actor.clone(),
                    comment: comment.clone(),
                })
                .await?
        }
        StacksCmd::Deregister { stack, reason } => {
            client
                .deregister(v1::DeregisterStackRequest {
                    stack: stack.clone(),
                    reason: reason.clone(),
                    actor: actor.clone(),
                })
                .await?
        }
    }
    .into_inner();
    if json_out {
        output::print_stack_change(true, &r, None, None);
        return Ok(());
    }
    // The table row needs the other stacks (for the share) and the policy's weights;
    // without them it still prints, with `?`.
    let all = client
        .list(v1::ListStacksRequest {})
        .await
        .ok()
        .map(|a| a.into_inner());
    let weights = policy_weights(ctx).await;
    output::print_stack_change(false, &r, all.as_ref(), weights.as_ref());
    Ok(())
}

/// The current policy's weights, for the stacks table; `None` if it cannot be read.
async fn policy_weights(ctx: &mut Ctx<'_>) -> Option<output::PolicyWeights> {
    let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await.ok()?);
    let r = client
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .ok()?
        .into_inner();
    let doc: Value = serde_json::from_str(&r.policy_json).ok()?;
    Some(output::PolicyWeights::from_policy(&doc))
}

async fn rollout(ctx: &mut Ctx<'_>, cmd: &RolloutCmd) -> Result<(), Failure> {
    let mut client = v1::rollouts_client::RolloutsClient::new(ctx.channel().await?);
    let actor = ctx.actor();
    let command = |id: &str, verb: &str| v1::RolloutCommandRequest {
        id: id.to_string(),
        command: verb.to_string(),
        actor: actor.clone(),
    };
    let status = match cmd {
        RolloutCmd::Start {
            stack,
            stable,
            scope,
            plan,
            step,
            max_step,
            warmup,
            auto_rollback,
            id,
            max_error_rate,
            latency_budget,
            no_kpi_gates,
        } => client
            .start(v1::StartRolloutRequest {
                release: stack.clone(),
                stable: stable.clone(),
                scope: scope.clone(),
                plan: plan.clone(),
                min_dwell_ms: step.unwrap_or(0) * 1000,
                max_dwell_ms: max_step.unwrap_or(0) * 1000,
                warmup_ms: warmup.unwrap_or(0) * 1000,
                auto_rollback: *auto_rollback,
                actor: actor.clone(),
                id: id.clone().unwrap_or_default(),
                max_error_rate: max_error_rate.unwrap_or(0.0),
                latency_budget_ms: latency_budget.map(|ms| ms as f64).unwrap_or(0.0),
                skip_kpi_gates: *no_kpi_gates,
            })
            .await?
            .into_inner(),
        RolloutCmd::List => {
            let r = client.list(v1::ListRolloutsRequest {}).await?.into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                output::print_rollouts(&r.rollouts);
            }
            return Ok(());
        }
        RolloutCmd::Status { id } => match id {
            Some(id) => client
                .get(v1::GetRolloutRequest { id: id.clone() })
                .await?
                .into_inner(),
            None => {
                let r = client.list(v1::ListRolloutsRequest {}).await?.into_inner();
                match r.rollouts.into_iter().next() {
                    Some(s) => s,
                    None => {
                        let mut f = Failure::rejected("no rollouts yet");
                        f.kind = "not_found";
                        return Err(f);
                    }
                }
            }
        },
        RolloutCmd::Pause { id } => client.command(command(id, "pause")).await?.into_inner(),
        RolloutCmd::Resume { id } => client.command(command(id, "resume")).await?.into_inner(),
        RolloutCmd::Promote { id } => client.command(command(id, "promote")).await?.into_inner(),
        RolloutCmd::Abort { id } => client.command(command(id, "abort")).await?.into_inner(),
        RolloutCmd::Rollback { id } => client.command(command(id, "rollback")).await?.into_inner(),
    };
    if ctx.json() {
        output::print_json(&status);
    } else {
        output::print_rollout(&status, now_unix_ms());
    }
    Ok(())
}

async fn audit(ctx: &mut Ctx<'_>, cmd: &AuditCmd) -> Result<(), Failure> {
    let mut client = v1::audit_client::AuditClient::new(ctx.channel().await?);
    match cmd {
        AuditCmd::List {
            limit,
            after,
            subject,
        } => {
            let r = client
                .list(v1::AuditListRequest {
                    after_seq: after.unwrap_or(0),
                    limit: *limit,
                    newest: after.is_none(),
                    subject_prefix: subject.clone(),
                })
                .await?
                .into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                output::print_audit(&r);
            }
            Ok(())
        }
        AuditCmd::Verify => {
            let r = client.verify(v1::AuditVerifyRequest {}).await?.into_inner();
            if r.ok && ctx.json() {
                output::print_json(&r);
            } else if r.ok {
                println!(
                    "audit chain intact: {} entries, head {}",
                    r.entries,
                    &r.head_hash[..r.head_hash.len().min(16)]
                );
            }
            if r.ok {
                Ok(())
            } else {
                let mut f = Failure::rejected(format!(
                    "audit chain broken at entry {}: {} ({} entries before it verify)",
                    r.broken_seq, r.broken_reason, r.entries
                ));
                f.kind = "audit_broken";
                Err(f)
            }
        }
    }
}

async fn status(ctx: &mut Ctx<'_>) -> Result<(), Failure> {
    let mut client = v1::fleet_client::FleetClient::new(ctx.channel().await?);
    let r = client.status(v1::StatusRequest {}).await?.into_inner();
    if ctx.json() {
        // The same schema as GET /api/v1/status.
        output::print_json(&proto::fleet_status(&r));
    } else {
        output::print_status(&r, now_unix_ms());
    }
    Ok(())
}

/// Follow the Watch stream as an Envoy would, acknowledging every snapshot.
async fn watch(ctx: &Ctx<'_>, node_id: &str, last_applied: u64, count: u64) -> Result<(), Failure> {
    let mut client = v1::data_plane_client::DataPlaneClient::new(ctx.stream_channel().await?);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(v1::WatchRequest {
            node_id: node_id.to_string(),
            last_applied_version: last_applied,
            ack_version: 0,
        })
        .await;
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut seen = 0;
    while let Some(s) = stream.message().await? {
        output::print_snapshot(ctx.json(), &s, now_unix_ms());
        let _ = tx
            .send(v1::WatchRequest {
                ack_version: s.version,
                ..Default::default()
            })
            .await;
        seen += 1;
        if count != 0 && seen >= count {
            break;
        }
    }
    Ok(())
}

async fn incidents(ctx: &mut Ctx<'_>, cmd: &IncidentsCmd) -> Result<(), Failure> {
    let mut client = v1::incidents_client::IncidentsClient::new(ctx.channel().await?);
    let actor = ctx.actor();
    let detail = match cmd {
        IncidentsCmd::List { limit } => {
            let r = client
                .list(v1::ListIncidentsRequest { limit: *limit })
                .await?
                .into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                output::print_incidents(&r.incidents);
            }
            return Ok(());
        }
        IncidentsCmd::Show { id } => client
            .get(v1::GetIncidentRequest { id: *id })
            .await?
            .into_inner(),
        IncidentsCmd::Approve { id, comment } => client
            .approve(v1::IncidentDecisionRequest {
                id: *id,
                actor,
                comment: comment.clone(),
            })
            .await?
            .into_inner(),
        IncidentsCmd::Reject { id, comment } => client
            .reject(v1::IncidentDecisionRequest {
                id: *id,
                actor,
                comment: comment.clone(),
            })
            .await?
            .into_inner(),
    };
    let incident: Value = serde_json::from_str(&detail.incident_json).unwrap_or(Value::Null);
    if ctx.json() {
        output::print_json(&json!({ "summary": detail.summary, "incident": incident }));
    } else {
        output::print_incident(&incident, now_unix_ms());
    }
    Ok(())
}

/// `now`, `+1h`, `-30m` → Unix ms; anything else passes through for the server to parse
/// (RFC 3339 or Unix ms).
fn event_time(text: &str, now_ms: u64) -> Result<Value, Failure> {
    let t = text.trim();
    if t == "now" {
        return Ok(json!(now_ms));
    }
    if let Some(rest) = t.strip_prefix('+').or_else(|| t.strip_prefix('-')) {
        let s = super::args::parse_duration_s(rest).map_err(Failure::usage)?;
        return Ok(if t.starts_with('+') {
            json!(now_ms + s * 1000)
        } else {
            json!(now_ms.saturating_sub(s * 1000))
        });
    }
    Ok(match t.parse::<u64>() {
        Ok(ms) => json!(ms),
        Err(_) => json!(t),
    })
}

/// `all`, `eu`, `segment:eu`, `rule:r1`, `stacks:a,b` → the event's JSON scope.
fn event_scope(text: &str) -> Value {
    let t = text.trim();
    if t == "all" {
        return json!("all");
    }
    match t.split_once(':') {
        Some(("stacks" | "stack", list)) => {
            json!({ "stacks": list.split(',').map(str::trim).collect::<Vec<_>>() })
        }
        Some(("rule", r)) => json!({ "rule": r }),
        Some(("segment", s)) => json!({ "segment": s }),
        _ => json!({ "segment": t }),
    }
}

async fn events(ctx: &mut Ctx<'_>, cmd: &EventsCmd) -> Result<(), Failure> {
    let mut client = v1::events_client::EventsClient::new(ctx.channel().await?);
    match cmd {
        EventsCmd::Add {
            kind,
            scope,
            from,
            to,
            description,
            id,
        } => {
            let now = now_unix_ms();
            let mut doc = json!({
                "kind": kind,
                "scope": event_scope(scope),
                "from": event_time(from, now)?,
                "to": event_time(to, now)?,
                "description": description,
                "actor": ctx.actor(),
            });
            if let Some(id) = id {
                doc["id"] = json!(id);
            }
            let e = client
                .add(v1::AddEventRequest {
                    event_json: doc.to_string(),
                })
                .await?
                .into_inner();
            if ctx.json() {
                output::print_json(&e);
            } else {
                println!("event {} registered", e.id);
                output::print_events(std::slice::from_ref(&e));
            }
        }
        EventsCmd::List => {
            let r = client.list(v1::ListEventsRequest {}).await?.into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                output::print_events(&r.events);
            }
        }
        EventsCmd::Remove { id } => {
            client
                .remove(v1::RemoveEventRequest {
                    id: id.clone(),
                    actor: ctx.actor(),
                })
                .await?;
            if ctx.json() {
                output::print_json(&json!({ "removed": id }));
            } else {
                println!("event {id} removed");
            }
        }
    }
    Ok(())
}

async fn tokens(ctx: &mut Ctx<'_>, cmd: &TokensCmd) -> Result<(), Failure> {
    let mut client = v1::tokens_client::TokensClient::new(ctx.channel().await?);
    match cmd {
        TokensCmd::Create { name, role } => {
            let r = client
                .create(v1::CreateTokenRequest {
                    name: name.clone(),
                    role: role.to_string(),
                })
                .await?
                .into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                // The token alone on stdout (`> file` keeps just it); the rest on stderr.
                println!("{}", r.token);
                if let Some(i) = &r.info {
                    eprintln!(
                        "token {} for {} (role {}): shown once, keep it in a file \
                         (--token-file) or SWITCHYARD_TOKEN",
                        i.id, i.name, i.role
                    );
                }
            }
        }
        TokensCmd::List => {
            let r = client.list(v1::ListTokensRequest {}).await?.into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                output::print_tokens(&r.tokens);
            }
        }
        TokensCmd::Revoke { id } => {
            let r = client
                .revoke(v1::RevokeTokenRequest { id: id.clone() })
                .await?
                .into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                println!("token {} of {} revoked", r.id, r.name);
            }
        }
        TokensCmd::Whoami => {
            let r = client.who_am_i(v1::WhoAmIRequest {}).await?.into_inner();
            if ctx.json() {
                output::print_json(&r);
            } else {
                if r.token_id.is_empty() {
                    println!("{} (role {}, {})", r.name, r.role, r.credential);
                } else {
                    println!("{} (role {}, token {})", r.name, r.role, r.token_id);
                }
            }
        }
    }
    Ok(())
}
