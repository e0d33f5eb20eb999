//! Ferry's topology: the file that describes a deployment, its validation, replica placement,
//! the SQL store of topology versions and the service that serves them to nodes.
//!
//! - [`model`]: the typed deployment (sites, nodes, namespaces, DR links).
//! - [`parse_topology`] / [`load_topology`]: read a TOML file into the model; every problem is a
//!   [`Diagnostic`] naming file, line, column and field.
//! - [`edit`]: edits of a topology file that keep its comments (the drills' role and link
//!   changes).
//! - [`placement`]: the pure function from (topology, site, namespace) to a partition map.
//! - [`store`], [`audit`], [`service`]: the SQL store of versions and of the audit trail, and
//!   the HTTP service over it.

pub mod audit;
pub mod diff;
pub mod edit;
pub mod model;
pub mod placement;
pub mod security;
pub mod service;
mod shared;
mod source;
pub mod store;
mod validate;

use std::fmt;
use std::path::Path;

pub use model::Topology;
pub use shared::SharedTopology;
pub use source::{Diagnostic, Severity};

/// The first validation error of a topology built or changed in memory rather than parsed
/// (e.g. a link's settings changed live), as `field.path: message`; `None` when it is valid.
pub fn first_error(topology: &Topology) -> Option<String> {
    validate::validate(topology)
        .into_iter()
        .find(|finding| finding.severity == Severity::Error)
        .map(|finding| format!("{}: {}", finding.path, finding.message))
}

/// A topology that passed validation, with the warnings it raised.
#[derive(Debug, Clone)]
pub struct Validated {
    pub topology: Topology,
    pub warnings: Vec<Diagnostic>,
}

/// Why a topology file was refused: every error found, and the warnings beside them.
#[derive(Debug, Clone, thiserror::Error)]
pub struct InvalidTopology {
    pub diagnostics: Vec<Diagnostic>,
}

impl InvalidTopology {
    /// The diagnostics that are errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for InvalidTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for diagnostic in &self.diagnostics {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Failure to read a topology file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("read topology file {path}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] InvalidTopology),
}

/// Parses and validates topology text; `file` names it in diagnostics.
pub fn parse_topology(file: &str, text: &str) -> Result<Validated, InvalidTopology> {
    let map = source::SourceMap::new(file, text)
        .map_err(|diagnostic| InvalidTopology { diagnostics: vec![diagnostic] })?;
    let topology: Topology = toml::from_str(text).map_err(|error| InvalidTopology {
        diagnostics: vec![map.diagnostic_for_span(error.span(), plain_type_names(error.message()))],
    })?;
    let mut diagnostics: Vec<Diagnostic> = validate::validate(&topology)
        .into_iter()
        .map(|finding| map.diagnostic(finding.severity, &finding.path, finding.message))
        .collect();
    diagnostics.sort_by_key(|d| (d.severity == Severity::Warning, d.line, d.column));
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(InvalidTopology { diagnostics });
    }
    Ok(Validated { topology, warnings: diagnostics })
}

/// Serde names Rust types in its messages ("expected u8"); say what a TOML author can write.
fn plain_type_names(message: &str) -> String {
    [
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
    ]
    .iter()
    .fold(message.to_owned(), |text, (rust, plain)| text.replace(rust, plain))
}

/// Reads, parses and validates a topology file.
pub fn load_topology(path: &Path) -> Result<Validated, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
    Ok(parse_topology(&path.display().to_string(), &text)?)
}
