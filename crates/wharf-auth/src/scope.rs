//! Scopes and actions of Docker's token specification:
//! `repository:team/app:pull,push`, `registry:catalog:*`.

use std::fmt;
use std::str::FromStr;

use wharf_oci::RepoName;

/// What can be done to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);

    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |b, a| b | a.bit()))
    }

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL
            .into_iter()
            .filter(move |a| self.0 & a.bit() != 0)
    }

    /// Parses `pull,push`, `*` (every action). Unknown actions are ignored, as
    /// distribution does, so a newer client's extra action cannot fail a login.
    pub fn parse_list(s: &str) -> Actions {
        s.split(',').fold(Actions::NONE, |acc, a| {
            acc.union(match a.trim() {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                _ => Actions::NONE,
            })
        })
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Action::as_str).collect()
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// What a scope is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Repository(RepoName),
    /// `registry:catalog:*`: listing repositories.
    Catalog,
}

/// One requested or granted scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: Actions,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}")]
pub struct ScopeError(pub String);

impl FromStr for Scope {
    type Err = ScopeError;

    /// `type[(class)]:name:actions`. Repository names never contain `:`, so the
    /// name is what lies between the first and the last colon.
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError(s.chars().take(300).collect());
        let (kind, rest) = s.split_once(':').ok_or_else(err)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(err)?;
        // A resource class, as in `repository(plugin)`, does not change access.
        let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
        let actions = Actions::parse_list(actions);
        match kind {
            "repository" => Ok(Scope {
                resource: Resource::Repository(name.parse().map_err(|_| err())?),
                actions,
            }),
            "registry" if name == "catalog" => Ok(Scope {
                resource: Resource::Catalog,
                actions: if actions.is_empty() {
                    Actions::NONE
                } else {
                    Actions::ALL
                },
            }),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Resource::Repository(n) => write!(f, "repository:{n}:{}", self.actions),
            Resource::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl From<&Scope> for AccessEntry {
    fn from(s: &Scope) -> AccessEntry {
        match &s.resource {
            Resource::Repository(n) => AccessEntry {
                kind: "repository".into(),
                name: n.to_string(),
                actions: s.actions.names().into_iter().map(String::from).collect(),
            },
            Resource::Catalog => AccessEntry {
                kind: "registry".into(),
                name: "catalog".into(),
                actions: vec!["*".into()],
            },
        }
    }
}

/// The actions an `access` claim grants on `resource`.
pub fn granted(access: &[AccessEntry], resource: &Resource) -> Actions {
    access
        .iter()
        .filter(|e| match resource {
            Resource::Repository(n) => e.kind == "repository" && e.name == n.as_str(),
            Resource::Catalog => e.kind == "registry" && e.name == "catalog",
        })
        .flat_map(|e| &e.actions)
        .fold(Actions::NONE, |acc, a| acc.union(Actions::parse_list(a)))
}

/// The project a repository belongs to: its first path component, or
/// `library` for a one-component name (as on Docker Hub).
pub fn project_of(repo: &RepoName) -> &str {
    repo.project()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        let s: Scope = "repository:team/app:pull,push".parse().unwrap();
        assert_eq!(
            s.resource,
            Resource::Repository("team/app".parse().unwrap())
        );
        assert_eq!(s.actions, Actions::PULL.union(Actions::PUSH));
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        let all: Scope = "repository:a:*".parse().unwrap();
        assert_eq!(all.actions, Actions::ALL);
        let plugin: Scope = "repository(plugin):a/b:pull".parse().unwrap();
        assert_eq!(plugin.actions, Actions::PULL);
        let cat: Scope = "registry:catalog:*".parse().unwrap();
        assert_eq!(cat.resource, Resource::Catalog);
        let odd: Scope = "repository:a:pull,frobnicate".parse().unwrap();
        assert_eq!(odd.actions, Actions::PULL);
        for bad in [
            "",
            "repository",
            "repository:a",
            "repository:A:pull",
            "repository:a//b:pull",
            "registry:other:*",
            "user:x:pull",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn access_claims_grant_only_their_resource() {
        let s: Scope = "repository:team/app:pull,push".parse().unwrap();
        let access = vec![AccessEntry::from(&s)];
        let app = Resource::Repository("team/app".parse().unwrap());
        let other = Resource::Repository("team/app2".parse().unwrap());
        assert_eq!(granted(&access, &app), s.actions);
        assert_eq!(granted(&access, &other), Actions::NONE);
        assert_eq!(granted(&access, &Resource::Catalog), Actions::NONE);
    }

    #[test]
    fn projects() {
        assert_eq!(project_of(&"busybox".parse().unwrap()), "library");
        assert_eq!(project_of(&"team/a/b".parse().unwrap()), "team");
    }

    proptest::proptest! {
        #[test]
        fn scope_parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Scope>();
        }
    }
}
