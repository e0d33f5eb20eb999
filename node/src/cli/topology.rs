//! `ferry topology …`: validate topology files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_topology::model::{Role, Topology};
use ferry_topology::{LoadError, load_topology};

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Check a topology file; print its errors (exit 1) or a summary of what it describes.
    Validate {
        /// The topology file (TOML).
        file: PathBuf,
    },
}

pub(crate) fn run(command: TopologyCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopologyCommand::Validate { file } => validate(&file),
    }
}

fn validate(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match load_topology(file) {
        Ok(validated) => {
            print!("{}", summary(&validated.topology));
            for warning in &validated.warnings {
                println!("{warning}");
            }
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(invalid)) => {
            for diagnostic in &invalid.diagnostics {
                eprintln!("{diagnostic}");
            }
            let errors = invalid.errors().count();
            eprintln!(
                "{}: invalid ({errors} error{})",
                file.display(),
                plural(errors)
            );
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}

/// What a topology describes, one line per site and link.
pub(crate) fn summary(topology: &Topology) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let nodes: usize = topology.sites.iter().map(|s| s.nodes.len()).sum();
    let _ = writeln!(
        out,
        "topology '{}': {} site{}, {nodes} node{}, {} link{}",
        topology.name,
        topology.sites.len(),
        plural(topology.sites.len()),
        plural(nodes),
        topology.links.len(),
        plural(topology.links.len()),
    );
    for site in &topology.sites {
        let role = match site.role {
            Role::Active => "active",
            Role::Standby => "standby",
        };
        let namespaces: Vec<String> = site
            .namespaces
            .iter()
            .map(|ns| format!("{} (rf {})", ns.name, ns.replication_factor))
            .collect();
        let _ = writeln!(
            out,
            "  site {:<12} src-id {:<3} {role:<7} {} node{} on {} rack{}; namespaces: {}",
            site.name.as_str(),
            site.src_id,
            site.nodes.len(),
            plural(site.nodes.len()),
            site.rack_count(),
            plural(site.rack_count()),
            namespaces.join(", "),
        );
    }
    for link in &topology.links {
        let namespaces: Vec<&str> = link.namespaces.iter().map(|n| n.as_str()).collect();
        let _ = writeln!(
            out,
            "  link {:<24} {:<8} namespaces: {}{}",
            link.name(),
            if link.enabled { "enabled" } else { "disabled" },
            namespaces.join(", "),
            if link.forward { " (forwards)" } else { "" },
        );
    }
    out
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}
