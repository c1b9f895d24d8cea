//! A rule's `match`: regions, countries, channels, cohorts, paths, methods, time and
//! percentage buckets. Decides the compiled [`Condition`]; names must resolve to what
//! the stacks and classification sections declared, and nothing unknown is dropped.

use switchyard_policy_doc::MatchDoc;

use crate::policy::check::Ctx;
use crate::policy::condition::Condition;
use crate::policy::ids::{ChannelId, CohortId};
use crate::schedule::{parse_day, parse_rfc3339, Schedule, TimeWindow};

use super::env::Env;

/// Compile the match at `path` (`rules[i].match`).
pub(super) fn condition(ctx: &mut Ctx, env: &Env, path: &str, m: &MatchDoc) -> Condition {
    let mut cond = Condition::default();
    for (i, r) in m.regions.iter().enumerate() {
        match env.regions.get(r) {
            Some(id) => cond.regions.push(id),
            None => ctx.err(
                format!("{path}.regions[{i}]"),
                format!("unknown region '{r}' (not used by any stack or geo table)"),
            ),
        }
    }
    for (i, code) in m.countries.iter().enumerate() {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            ctx.err(
                format!("{path}.countries[{i}]"),
                format!("'{code}' is not a two-letter country code"),
            );
        }
        if let [a, b] = *code.as_bytes() {
            cond.countries
                .push([a.to_ascii_uppercase(), b.to_ascii_uppercase()]);
        }
    }
    for (i, ch) in m.channels.iter().enumerate() {
        match env.channels.iter().position(|x| x == ch) {
            Some(id) => cond.channels.push(id as ChannelId),
            None => ctx.err(
                format!("{path}.channels[{i}]"),
                format!("unknown channel '{ch}'"),
            ),
        }
    }
    for (i, co) in m.cohorts.iter().enumerate() {
        if co.is_empty() {
            ctx.err(format!("{path}.cohorts[{i}]"), "must not be empty");
        }
    }
    for co in &m.cohorts {
        if let Ok(id) = env.cohorts.binary_search(co) {
            if !cond.cohorts.contains(&(id as CohortId)) {
                cond.cohorts.push(id as CohortId);
            }
        }
    }
    for (i, p) in m.path_prefixes.iter().enumerate() {
        if !p.starts_with('/') {
            ctx.err(
                format!("{path}.path_prefixes[{i}]"),
                format!("'{p}' must start with '/'"),
            );
        }
    }
    cond.path_prefixes = m.path_prefixes.clone();
    cond.methods = m.methods.iter().map(|s| s.to_ascii_uppercase()).collect();
    if let Some(t) = &m.time {
        let tpath = format!("{path}.time");
        let mut schedule = Schedule::default();
        for (i, w) in t.windows.iter().enumerate() {
            match TimeWindow::parse(&w.start, &w.end) {
                Ok(win) => schedule.windows.push(win),
                Err(e) => ctx.err(format!("{tpath}.windows[{i}]"), e),
            }
        }
        for (i, d) in t.days.iter().enumerate() {
            match parse_day(d) {
                Some(day) => schedule.days |= 1 << day,
                None => ctx.err(
                    format!("{tpath}.days[{i}]"),
                    format!("'{d}' is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                ),
            }
        }
        for (i, cpn) in t.campaigns.iter().enumerate() {
            let start = parse_rfc3339(&cpn.start);
            let end = parse_rfc3339(&cpn.end);
            match (start, end) {
                (Ok(s), Ok(e)) if s < e => schedule.campaigns.push((s, e)),
                (Ok(_), Ok(_)) => {
                    ctx.err(format!("{tpath}.campaigns[{i}]"), "end must be after start")
                }
                (Err(e), _) => ctx.err(format!("{tpath}.campaigns[{i}].start"), e),
                (_, Err(e)) => ctx.err(format!("{tpath}.campaigns[{i}].end"), e),
            }
        }
        if t.windows.is_empty() && t.days.is_empty() && t.campaigns.is_empty() {
            ctx.err(&tpath, "give at least one of windows, days, campaigns");
        }
        cond.time = Some(schedule);
    }
    if let Some(p) = &m.percent {
        let ppath = format!("{path}.percent");
        let ok = p.from.is_finite()
            && p.to.is_finite()
            && p.from >= 0.0
            && p.to <= 100.0
            && p.from < p.to;
        if !ok {
            ctx.err(&ppath, "need 0 <= from < to <= 100");
        } else if !env.has_user_key {
            ctx.err(&ppath, "percentage buckets need classify.user_key");
        } else {
            let from = (p.from * 100.0).round() as u16;
            let to = (p.to * 100.0).round() as u16;
            cond.percent = Some((from, to));
        }
    }
    cond
}
