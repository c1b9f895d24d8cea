//! The `classify` section: the geo tables (interning their regions), the channel
//! definitions, the cohort header and the user key. Decides region, channel and key
//! sources for classification; it never decides which rule a request matches, and
//! leaves the request-scan slots to [`super::inputs`].

use switchyard_policy_doc::{AmbiguousDoc, ClassifyDoc};

use crate::cidr::{Cidr, CidrTable};
use crate::policy::check::{check_header, check_key, valid_name, Ctx};
use crate::policy::compiled::{AmbiguousGeo, ChannelDef, Classification};
use crate::policy::ids::{ChannelId, RegionId};
use crate::policy::inputs::Inputs;

use super::regions::Regions;

/// The compiled classification (its inputs plan still empty) and the channel names in
/// id order (the default channel included).
pub(super) fn classification(
    ctx: &mut Ctx,
    c: &ClassifyDoc,
    regions: &mut Regions,
) -> (Classification, Vec<String>) {
    if let Some(h) = &c.geo.header {
        check_header(ctx, "classify.geo.header", h);
    }
    let mut countries: Vec<([u8; 2], RegionId)> = Vec::new();
    for (code, region) in &c.geo.countries {
        let path = format!("classify.geo.countries.{code}");
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            ctx.err(&path, format!("'{code}' is not a two-letter country code"));
        }
        if region.is_empty() {
            ctx.err(&path, "region must not be empty");
        }
        let region = regions.intern(region);
        if let [a, b] = *code.as_bytes() {
            let key = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
            match countries.binary_search_by(|(c, _)| c.cmp(&key)) {
                Ok(i) => countries[i].1 = region,
                Err(i) => countries.insert(i, (key, region)),
            }
        }
    }
    let mut cidrs = Vec::new();
    for (i, entry) in c.geo.cidrs.iter().enumerate() {
        match entry.cidr.parse::<Cidr>() {
            Ok(net) => cidrs.push((net, regions.intern(&entry.region))),
            Err(e) => ctx.err(
                format!("classify.geo.cidrs[{i}].cidr"),
                format!("'{}': {e}", entry.cidr),
            ),
        }
        if entry.region.is_empty() {
            ctx.err(
                format!("classify.geo.cidrs[{i}].region"),
                "must not be empty",
            );
        }
    }
    let ambiguous_geo = c
        .geo
        .ambiguous
        .as_ref()
        .map_or(AmbiguousGeo::Unknown, |doc| ambiguous(ctx, doc, regions));
    let mut channels: Vec<String> = Vec::new();
    let mut channel_defs = Vec::new();
    for (i, ch) in c.channels.iter().enumerate() {
        let path = format!("classify.channels[{i}]");
        if !valid_name(&ch.name) {
            ctx.err(
                format!("{path}.name"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", ch.name),
            );
        }
        if channels.contains(&ch.name) {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate channel '{}'", ch.name),
            );
        }
        if ch.user_agent_contains.is_empty() && ch.headers.is_empty() && ch.path_prefixes.is_empty()
        {
            ctx.err(
                &path,
                "a channel needs at least one of user_agent_contains, headers, path_prefixes",
            );
        }
        for (j, h) in ch.headers.iter().enumerate() {
            check_header(ctx, &format!("{path}.headers[{j}]"), h);
        }
        for (j, p) in ch.path_prefixes.iter().enumerate() {
            if !p.starts_with('/') {
                ctx.err(
                    format!("{path}.path_prefixes[{j}]"),
                    format!("'{p}' must start with '/'"),
                );
            }
        }
        for (j, u) in ch.user_agent_contains.iter().enumerate() {
            if u.is_empty() {
                ctx.err(
                    format!("{path}.user_agent_contains[{j}]"),
                    "must not be empty",
                );
            }
        }
        channels.push(ch.name.clone());
        channel_defs.push(ChannelDef {
            id: (channels.len() - 1) as ChannelId,
            user_agent_contains: ch
                .user_agent_contains
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            ua_mask: 0,
            headers: ch.headers.clone(),
            header_slots: Vec::new(),
            path_prefixes: ch.path_prefixes.clone(),
        });
    }
    let default_channel_name = c
        .default_channel
        .clone()
        .unwrap_or_else(|| "web".to_string());
    if !valid_name(&default_channel_name) {
        ctx.err(
            "classify.default_channel",
            format!("'{default_channel_name}' must be 1-48 characters of [A-Za-z0-9_-]"),
        );
    }
    let default_channel = match channels.iter().position(|n| *n == default_channel_name) {
        Some(i) => i as ChannelId,
        None => {
            channels.push(default_channel_name);
            (channels.len() - 1) as ChannelId
        }
    };
    if let Some(h) = &c.cohort_header {
        check_header(ctx, "classify.cohort_header", h);
    }
    for (i, k) in c.user_key.iter().enumerate() {
        check_key(ctx, &format!("classify.user_key[{i}]"), k);
    }
    let classification = Classification {
        geo_header: c.geo.header.clone(),
        countries,
        cidrs: CidrTable::new(cidrs),
        ambiguous_geo,
        channels: channel_defs,
        default_channel,
        cohort_header: c.cohort_header.clone(),
        user_key: c.user_key.clone(),
        bucket_salt: c.bucket_salt.clone().unwrap_or_else(|| "switchyard".into()),
        inputs: Inputs::default(),
    };
    (classification, channels)
}

/// `classify.geo.ambiguous`: `mode` and, with `assume` only, a known `region`.
fn ambiguous(ctx: &mut Ctx, doc: &AmbiguousDoc, regions: &Regions) -> AmbiguousGeo {
    const PATH: &str = "classify.geo.ambiguous";
    let region = doc.get("region");
    let assume = doc.get("mode").is_some_and(|m| m == "assume");
    let mode = match doc.get("mode").map(String::as_str) {
        Some("unknown") => AmbiguousGeo::Unknown,
        Some("reject") => AmbiguousGeo::Reject,
        Some("most_restrictive") => AmbiguousGeo::MostRestrictive,
        Some("assume") => match region.map(|r| regions.get(r)) {
            Some(Some(id)) => AmbiguousGeo::Assume(id),
            Some(None) => {
                ctx.err(format!("{PATH}.region"), "unknown region");
                AmbiguousGeo::Unknown
            }
            None => {
                ctx.err(format!("{PATH}.region"), "required with mode `assume`");
                AmbiguousGeo::Unknown
            }
        },
        Some(_) => {
            ctx.err(
                format!("{PATH}.mode"),
                "must be one of `unknown`, `reject`, `most_restrictive`, `assume`",
            );
            AmbiguousGeo::Unknown
        }
        None => {
            ctx.err(format!("{PATH}.mode"), "missing field `mode`");
            AmbiguousGeo::Unknown
        }
    };
    for key in doc.keys() {
        match key.as_str() {
            "mode" => {}
            "region" if assume => {}
            "region" => ctx.err(format!("{PATH}.region"), "only with mode `assume`"),
            _ => ctx.err(
                format!("{PATH}.{key}"),
                format!("unknown field `{key}`, expected one of `mode` or `region`"),
            ),
        }
    }
    mode
}
