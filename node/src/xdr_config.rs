//! Aerospike's XDR configuration commands over the info protocol, for what Ferry has, so
//! scripts written for Aerospike keep working:
//!
//! - `get-config:context=xdr`: `dcs` (the links out of this site), `src-id`.
//! - `get-config:context=xdr;dc=DC`: the link's `period-ms` and, as in Aerospike 5+, its
//!   namespace-level settings (`enabled`, `namespaces`, `delay-ms`, `hot-key-ms`,
//!   `max-throughput`, `ship-only-specified-sets`, `ship-set`, `ignore-set`,
//!   `ship-nsup-deletes`, `forward`, `compression-level`, `compression-threshold`).
//! - `get-config:context=xdr;dc=DC;namespace=NS`: the namespace-level settings alone.
//! - `set-config:context=xdr;dc=DC[;namespace=NS];NAME=VALUE`: changes one setting of the
//!   running link on this node at once (its shipper restarts from its cursor: nothing is lost
//!   or skipped). As in Aerospike the change lives in the node until it restarts; in Ferry also
//!   until the topology service publishes a new version. A Ferry link's settings hold for all
//!   its namespaces, so a namespace-level change applies to the whole link (`enabled=false`
//!   stops the link on this node). `ship-set` and `ignore-set` add a set.
//!
//! A value is checked by the same validation as a topology file before it applies.

use std::sync::Arc;

use ferry_topology::model::Link;

use crate::info::{NOT_FOUND, PARAMETER, error, params};
use crate::node::NodeState;

/// The `name=value` parameters of a command whose names are open, in order.
fn pairs(args: &str) -> Result<Vec<(&str, &str)>, String> {
    args.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=').ok_or_else(|| error(PARAMETER, format!("bad parameter '{pair}'")))
        })
        .collect()
}

/// The link out of this site to `dc`, checked to ship `namespace` when one is named; an
/// error answer otherwise.
pub(crate) fn outgoing<'a>(
    state: &NodeState,
    topology: &'a ferry_topology::Topology,
    dc: &str,
    namespace: Option<&str>,
) -> Result<&'a Link, String> {
    let site = &state.site().name;
    let link =
        topology.links.iter().find(|l| l.from == *site && l.to == *dc).ok_or_else(|| {
            error(NOT_FOUND, format!("no link to dc '{dc}' ships from this site"))
        })?;
    match namespace {
        Some(ns) if !link.namespaces.iter().any(|n| n.as_str() == ns) => {
            Err(error(NOT_FOUND, format!("the link to dc '{dc}' does not ship namespace '{ns}'")))
        }
        _ => Ok(link),
    }
}

fn namespace_settings(link: &Link) -> Vec<(&'static str, String)> {
    vec![
        ("enabled", link.enabled.to_string()),
        ("delay-ms", link.delay_ms.to_string()),
        ("hot-key-ms", link.hot_key_ms.to_string()),
        ("max-throughput", link.max_throughput.to_string()),
        ("ship-only-specified-sets", link.ship_only_specified_sets.to_string()),
        ("ship-set", link.ship_set.join(",")),
        ("ignore-set", link.ignore_set.join(",")),
        ("ship-nsup-deletes", link.ship_nsup_deletes.to_string()),
        ("forward", link.forward.to_string()),
        ("enable-compression", "true".to_owned()),
        ("compression-level", link.compression_level.to_string()),
        ("compression-threshold", link.compression_threshold.to_string()),
    ]
}

fn render(settings: Vec<(&'static str, String)>) -> String {
    settings
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// `get-config:context=xdr[;dc=DC[;namespace=NS]]`.
pub fn get_config(state: &NodeState, args: &str) -> String {
    let params = match params(args, &["context", "dc", "namespace"]) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    if let Some(context) = params.get("context").filter(|&&c| c != "xdr") {
        return error(PARAMETER, format!("bad parameter 'context={context}'"));
    }
    let (dc, namespace) = (params.get("dc").copied(), params.get("namespace").copied());
    let topology = state.topology.get();
    let Some(dc) = dc else {
        let site = &state.site().name;
        let dcs: Vec<&str> =
            topology.links.iter().filter(|l| l.from == *site).map(|l| l.to.as_str()).collect();
        return format!("dcs={};src-id={};trace-sample=0", dcs.join(","), state.site_id());
    };
    let link = match outgoing(state, &topology, dc, namespace) {
        Ok(link) => link,
        Err(answer) => return answer,
    };
    match namespace {
        Some(_) => render(namespace_settings(link)),
        None => {
            let names: Vec<&str> = link.namespaces.iter().map(|n| n.as_str()).collect();
            let mut settings =
                vec![("period-ms", link.period_ms.to_string()), ("namespaces", names.join(","))];
            settings.extend(namespace_settings(link));
            render(settings)
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| error(PARAMETER, format!("{name} '{value}' is not a number in range")))
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(error(PARAMETER, format!("{name} '{value}' is not true or false"))),
    }
}

/// Sets one Aerospike-named setting on `link`.
fn set(link: &mut Link, name: &str, value: &str) -> Result<(), String> {
    match name {
        "period-ms" => link.period_ms = number(name, value)?,
        "delay-ms" => link.delay_ms = number(name, value)?,
        "hot-key-ms" => link.hot_key_ms = number(name, value)?,
        "max-throughput" => link.max_throughput = number(name, value)?,
        "compression-level" => link.compression_level = number(name, value)?,
        "compression-threshold" => link.compression_threshold = number(name, value)?,
        "ship-only-specified-sets" => link.ship_only_specified_sets = flag(name, value)?,
        "ship-nsup-deletes" => link.ship_nsup_deletes = flag(name, value)?,
        "forward" => link.forward = flag(name, value)?,
        "enabled" => link.enabled = flag(name, value)?,
        // Ferry compresses every batch above `compression-threshold`.
        "enable-compression" if flag(name, value)? => {}
        "enable-compression" => {
            return Err(error(
                PARAMETER,
                "Ferry always compresses batches above compression-threshold",
            ));
        }
        "ship-set" if !link.ship_set.iter().any(|s| s == value) => {
            link.ship_set.push(value.to_owned())
        }
        "ignore-set" if !link.ignore_set.iter().any(|s| s == value) => {
            link.ignore_set.push(value.to_owned());
        }
        "ship-set" | "ignore-set" => {}
        _ => return Err(error(PARAMETER, format!("'{name}' is not an XDR setting Ferry has"))),
    }
    Ok(())
}

/// `set-config:context=xdr;dc=DC[;namespace=NS];NAME=VALUE…`: `ok`, or an error that changed
/// nothing.
pub fn set_config(state: &NodeState, args: &str) -> String {
    let pairs = match pairs(args) {
        Ok(pairs) => pairs,
        Err(answer) => return answer,
    };
    let (mut dc, mut namespace, mut changes) = (None, None, Vec::new());
    for (name, value) in pairs {
        match name {
            "context" if value == "xdr" => {}
            "context" => return error(PARAMETER, "only context=xdr is supported"),
            "dc" => dc = Some(value),
            "namespace" => namespace = Some(value),
            _ => changes.push((name, value)),
        }
    }
    let Some(dc) = dc else { return error(PARAMETER, "set-config:context=xdr needs dc=NAME") };
    if changes.is_empty() {
        return error(PARAMETER, "nothing to set");
    }
    let _editing = state.topology_edit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let current = state.topology.get();
    let mut topology = (*current).clone();
    let link = match outgoing(state, &current, dc, namespace) {
        Ok(link) => link,
        Err(answer) => return answer,
    };
    let Some(edited) = topology.links.iter_mut().find(|l| l.from == link.from && l.to == link.to)
    else {
        return error(NOT_FOUND, format!("no link to dc '{dc}'"));
    };
    for (name, value) in changes {
        if let Err(answer) = set(edited, name, value) {
            return answer;
        }
    }
    if let Some(problem) = ferry_topology::first_error(&topology) {
        return error(PARAMETER, problem);
    }
    tracing::info!(dc, args, "XDR link settings changed by set-config");
    state.topology.replace(Arc::new(topology));
    state.links_changed.notify_one();
    "ok".to_owned()
}
