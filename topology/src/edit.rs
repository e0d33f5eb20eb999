//! Edits of a topology file that keep its comments and layout, for the drills: a site's role
//! and write fence, whether a link ships, a link's reverse. The edited text is validated like
//! any topology file before anyone stores it ([`TopologyEdit::finish`]).

use toml_edit::{DocumentMut, Item, Table, value};

use crate::model::{Role, WriteFence};
use crate::{InvalidTopology, Validated};

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    #[error("the topology is not TOML: {0}")]
    NotToml(String),
    #[error("no site '{0}' in the topology")]
    NoSite(String),
    #[error("no link {from} -> {to} in the topology")]
    NoLink { from: String, to: String },
    #[error("the edited topology is not valid: {0}")]
    Invalid(#[from] InvalidTopology),
}

/// A topology file being edited.
#[derive(Debug, Clone)]
pub struct TopologyEdit {
    document: DocumentMut,
}

impl TopologyEdit {
    /// Starts editing the file `text`.
    pub fn new(text: &str) -> Result<TopologyEdit, EditError> {
        let document =
            text.parse().map_err(|e: toml_edit::TomlError| EditError::NotToml(e.to_string()))?;
        Ok(TopologyEdit { document })
    }

    fn tables(&mut self, key: &str) -> impl Iterator<Item = &mut Table> {
        self.document
            .get_mut(key)
            .and_then(Item::as_array_of_tables_mut)
            .into_iter()
            .flat_map(|array| array.iter_mut())
    }

    fn site(&mut self, name: &str) -> Result<&mut Table, EditError> {
        self.tables("sites")
            .find(|site| site.get("name").and_then(Item::as_str) == Some(name))
            .ok_or_else(|| EditError::NoSite(name.to_owned()))
    }

    fn link(&mut self, from: &str, to: &str) -> Option<&mut Table> {
        let ends = |t: &Table, key: &str| t.get(key).and_then(Item::as_str).map(str::to_owned);
        self.tables("links").find(|link| {
            ends(link, "from").as_deref() == Some(from) && ends(link, "to").as_deref() == Some(to)
        })
    }

    /// Sets a site's role.
    pub fn set_role(&mut self, site: &str, role: Role) -> Result<&mut Self, EditError> {
        self.site(site)?.insert("role", value(role.to_string()));
        Ok(self)
    }

    /// Sets a site's write fence; `None` removes the key, so the role decides.
    pub fn set_fence(
        &mut self,
        site: &str,
        fence: Option<WriteFence>,
    ) -> Result<&mut Self, EditError> {
        let table = self.site(site)?;
        match fence {
            Some(fence) => {
                table.insert("write-fence", value(fence.to_string()));
            }
            None => {
                table.remove("write-fence");
            }
        }
        Ok(self)
    }

    /// Hands the active role from `from` to `to`: `to` active, `from` standby, each with the
    /// fence its role implies (a standby refuses client writes).
    pub fn hand_over(&mut self, from: &str, to: &str) -> Result<&mut Self, EditError> {
        self.set_role(from, Role::Standby)?
            .set_fence(from, None)?
            .set_role(to, Role::Active)?
            .set_fence(to, None)
    }

    /// Enables or disables the link `from -> to`.
    pub fn set_link_enabled(
        &mut self,
        from: &str,
        to: &str,
        enabled: bool,
    ) -> Result<&mut Self, EditError> {
        let link = self
            .link(from, to)
            .ok_or_else(|| EditError::NoLink { from: from.to_owned(), to: to.to_owned() })?;
        link.insert("enabled", value(enabled));
        Ok(self)
    }

    /// Whether the topology has a link `from -> to`.
    pub fn has_link(&mut self, from: &str, to: &str) -> bool {
        self.link(from, to).is_some()
    }

    /// Adds the link `to -> from` with the settings of `from -> to`, unless it exists.
    pub fn add_reverse_link(&mut self, from: &str, to: &str) -> Result<&mut Self, EditError> {
        if self.has_link(to, from) {
            return Ok(self);
        }
        let mut reverse = self
            .link(from, to)
            .ok_or_else(|| EditError::NoLink { from: from.to_owned(), to: to.to_owned() })?
            .clone();
        reverse.insert("from", value(to));
        reverse.insert("to", value(from));
        reverse.decor_mut().clear();
        if let Some(links) = self.document.get_mut("links").and_then(Item::as_array_of_tables_mut) {
            links.push(reverse);
        }
        Ok(self)
    }

    /// The edited file, validated.
    pub fn finish(&self, source: &str) -> Result<(String, Validated), EditError> {
        let text = self.document.to_string();
        let validated = crate::parse_topology(source, &text)?;
        Ok((text, validated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SITES: &str = include_str!("../../examples/two-sites.toml");

    #[test]
    fn a_switchover_edit_swaps_roles_and_links_and_keeps_comments() {
        let mut edit = TopologyEdit::new(TWO_SITES).expect("toml");
        edit.set_fence("eu-west", Some(WriteFence::ClientWrites))
            .and_then(|e| e.hand_over("us-east", "eu-west"))
            .and_then(|e| e.set_link_enabled("us-east", "eu-west", false))
            .and_then(|e| e.set_link_enabled("eu-west", "us-east", true))
            .expect("edits");
        let (text, validated) = edit.finish("edited.toml").expect("valid");
        assert!(text.starts_with("# Two sites on one machine"), "comments are kept");
        let topology = validated.topology;
        let site = |name: &str| topology.site(name).expect("site");
        assert_eq!((site("us-east").role, site("eu-west").role), (Role::Standby, Role::Active));
        assert_eq!(site("us-east").fence(), WriteFence::ClientWrites, "a standby refuses clients");
        assert_eq!(site("eu-west").fence(), WriteFence::None, "the new active's fence is lifted");
        let enabled = |from: &str, to: &str| {
            topology.links.iter().find(|l| l.from == *from && l.to == *to).map(|l| l.enabled)
        };
        assert_eq!(enabled("us-east", "eu-west"), Some(false));
        assert_eq!(enabled("eu-west", "us-east"), Some(true));
    }

    #[test]
    fn a_reverse_link_copies_the_settings_and_unknown_names_are_errors() {
        let one_way: String = {
            let mut edit = TopologyEdit::new(TWO_SITES).expect("toml");
            // Drop the example's reverse link to add it back.
            if let Some(links) =
                edit.document.get_mut("links").and_then(Item::as_array_of_tables_mut)
            {
                links.retain(|l| l.get("from").and_then(Item::as_str) == Some("us-east"));
            }
            edit.document.to_string()
        };
        let mut edit = TopologyEdit::new(&one_way).expect("toml");
        assert!(!edit.has_link("eu-west", "us-east"));
        edit.add_reverse_link("us-east", "eu-west").expect("added");
        let (_, validated) = edit.finish("edited.toml").expect("valid");
        let links = &validated.topology.links;
        assert_eq!(links.len(), 2);
        assert_eq!((links[1].from.as_str(), links[1].to.as_str()), ("eu-west", "us-east"));
        assert_eq!(
            (links[1].namespaces.clone(), links[1].period_ms),
            (links[0].namespaces.clone(), links[0].period_ms)
        );
        assert!(matches!(edit.set_role("mars", Role::Active), Err(EditError::NoSite(_))));
        assert!(matches!(edit.set_link_enabled("a", "b", true), Err(EditError::NoLink { .. })));
    }
}
