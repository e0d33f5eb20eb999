//! Positions in a topology file: field paths, their spans, and line/column diagnostics.
//!
//! Parsing into the model loses positions, so the parser keeps the `toml_edit` document beside
//! it. A [`FieldPath`] (`sites[0].nodes[1].rack-id`) is resolved to a byte span there, and a byte
//! offset (from a serde error) is resolved back to the deepest path that covers it.

use std::fmt;
use std::ops::Range;

use toml_edit::{Item, Table, TableLike, Value};

/// One step in a path to a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathSegment {
    Key(String),
    Index(usize),
}

/// Where a value sits in the file, e.g. `links[1].namespaces[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Key(key.to_owned()));
        next
    }

    /// This path extended by an array index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Index(index));
        next
    }

    /// The path's segments, outermost first.
    pub(crate) fn segments(&self) -> &[PathSegment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(file)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => f.write_str(key)?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// How serious a diagnostic is: errors make a file invalid, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a topology file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The field, e.g. `links[0].namespaces[1]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// A parsed file's text and span tree, for turning paths and offsets into positions.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    file: &'a str,
    text: &'a str,
    document: Option<toml_edit::Document<&'a str>>,
}

impl<'a> SourceMap<'a> {
    /// Indexes `text`; a file that is not even TOML yields its syntax error.
    pub(crate) fn new(file: &'a str, text: &'a str) -> Result<Self, Diagnostic> {
        match toml_edit::Document::parse(text) {
            Ok(document) => Ok(Self { file, text, document: Some(document) }),
            Err(error) => {
                let map = Self { file, text, document: None };
                let offset = error.span().map_or(0, |span| span.start);
                Err(map.diagnostic_at(
                    Severity::Error,
                    offset,
                    FieldPath::root(),
                    error.message().trim().to_owned(),
                ))
            }
        }
    }

    /// A diagnostic positioned at the value of `path` (or its nearest present parent).
    pub(crate) fn diagnostic(
        &self,
        severity: Severity,
        path: &FieldPath,
        message: String,
    ) -> Diagnostic {
        let offset = self.span_of(path).map_or(0, |span| span.start);
        self.diagnostic_at(severity, offset, path.clone(), message)
    }

    /// A diagnostic for an error the deserializer reported at `span`.
    pub(crate) fn diagnostic_for_span(
        &self,
        span: Option<Range<usize>>,
        message: String,
    ) -> Diagnostic {
        let offset = span.map_or(0, |span| span.start);
        let path = self.path_at(offset);
        self.diagnostic_at(Severity::Error, offset, path, message)
    }

    fn diagnostic_at(
        &self,
        severity: Severity,
        offset: usize,
        path: FieldPath,
        message: String,
    ) -> Diagnostic {
        let (line, column) = line_column(self.text, offset);
        Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            column,
            field: path.to_string(),
            message,
        }
    }

    fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let mut node = At::Item(self.document.as_ref()?.as_item());
        let mut best = None;
        for segment in path.segments() {
            match node.child(segment) {
                Some(child) => {
                    node = child;
                    best = node.span().or(best);
                }
                None => break,
            }
        }
        best
    }

    fn path_at(&self, offset: usize) -> FieldPath {
        let Some(document) = &self.document else {
            return FieldPath::root();
        };
        let mut path = FieldPath::root();
        let mut node = At::Item(document.as_item());
        'descend: loop {
            for (segment, child) in node.children() {
                if node.key_contains(&segment, offset) || child.contains(offset) {
                    path = match &segment {
                        PathSegment::Key(key) => path.key(key),
                        PathSegment::Index(index) => path.index(*index),
                    };
                    node = child;
                    continue 'descend;
                }
            }
            return path;
        }
    }
}

/// A node of the span tree: `toml_edit` keeps tables, items and array values apart.
#[derive(Clone, Copy)]
enum At<'d> {
    Item(&'d Item),
    Table(&'d Table),
    Value(&'d Value),
}

impl<'d> At<'d> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            At::Item(item) => item.span(),
            At::Table(table) => table.span(),
            At::Value(value) => value.span(),
        }
    }

    fn table_like(self) -> Option<&'d dyn TableLike> {
        match self {
            At::Item(item) => item.as_table_like(),
            At::Table(table) => Some(table),
            At::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn child(self, segment: &PathSegment) -> Option<At<'d>> {
        match segment {
            PathSegment::Key(key) => self.table_like()?.get(key).map(At::Item),
            PathSegment::Index(index) => match self {
                At::Item(Item::ArrayOfTables(tables)) => tables.get(*index).map(At::Table),
                At::Item(Item::Value(value)) | At::Value(value) => {
                    value.as_array()?.get(*index).map(At::Value)
                }
                _ => None,
            },
        }
    }

    fn children(self) -> Vec<(PathSegment, At<'d>)> {
        if let Some(table) = self.table_like() {
            return table
                .iter()
                .map(|(key, item)| (PathSegment::Key(key.to_owned()), At::Item(item)))
                .collect();
        }
        match self {
            At::Item(Item::ArrayOfTables(tables)) => tables
                .iter()
                .enumerate()
                .map(|(i, table)| (PathSegment::Index(i), At::Table(table)))
                .collect(),
            At::Item(Item::Value(value)) | At::Value(value) => value
                .as_array()
                .map(|array| {
                    array
                        .iter()
                        .enumerate()
                        .map(|(i, value)| (PathSegment::Index(i), At::Value(value)))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether the offset lies on the key that names `segment` in this table.
    fn key_contains(self, segment: &PathSegment, offset: usize) -> bool {
        match (segment, self.table_like()) {
            (PathSegment::Key(key), Some(table)) => {
                table.key(key).and_then(|k| k.span()).is_some_and(|span| span.contains(&offset))
            }
            _ => false,
        }
    }

    /// Whether the offset lies in this node: its own span, or (for tables, whose span is only
    /// their header) any of its children's or their keys'.
    fn contains(self, offset: usize) -> bool {
        if self.span().is_some_and(|span| span.contains(&offset)) {
            return true;
        }
        self.children()
            .into_iter()
            .any(|(segment, child)| self.key_contains(&segment, offset) || child.contains(offset))
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
    }

    #[test]
    fn paths_resolve_to_value_positions_and_back() {
        let text = "[[sites]]\nname = \"a\"\n[[sites.nodes]]\nid = \"n1\"\nrack-id = 7\n";
        let map = SourceMap::new("t.toml", text).expect("valid toml");
        let path = FieldPath::root().key("sites").index(0).key("nodes").index(0).key("rack-id");
        let found = map.diagnostic(Severity::Error, &path, "bad".into());
        assert_eq!((found.line, found.column), (5, 11));
        assert_eq!(found.field, "sites[0].nodes[0].rack-id");
        let offset = text.find('7').expect("digit present");
        assert_eq!(map.path_at(offset), path);
    }

    #[test]
    fn missing_field_points_at_nearest_parent() {
        let text = "x = 1\n[[links]]\nfrom = \"a\"\n";
        let map = SourceMap::new("t.toml", text).expect("valid toml");
        let path = FieldPath::root().key("links").index(0).key("to");
        let found = map.diagnostic(Severity::Error, &path, "missing".into());
        assert_eq!(found.line, 2);
    }
}
