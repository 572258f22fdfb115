//! Per-project policy: quota, tag immutability and retention.
//!
//! Policies are stored as written ([`ProjectPolicy`]) and compiled here on
//! use. Patterns are globs (`*`, `?`, `[a-z]`, `{a,b}`, `**`); `*` does not
//! cross `/`. Repository patterns match the name inside the project (`app/x`
//! for `team/app/x`), tag patterns the tag.

use std::collections::HashMap;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use wharf_meta::{Keep, ProjectPolicy, TagInfo};
use wharf_oci::{Digest, RepoName, Tag};

use crate::{CoreError, Registry, now_ms};

/// Most rules of each kind a project may have.
pub const MAX_RULES: usize = 64;
/// Longest pattern.
pub const MAX_PATTERN: usize = 256;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A policy with its patterns compiled.
pub(crate) struct Compiled {
    pub quota: Option<u64>,
    immutable: Vec<(GlobMatcher, GlobMatcher)>,
    retention: Vec<(GlobMatcher, GlobMatcher, Keep)>,
}

fn glob(what: &str, pattern: &str) -> Result<GlobMatcher, CoreError> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN {
        return Err(CoreError::InvalidPolicy(format!(
            "{what} pattern must be 1 to {MAX_PATTERN} characters"
        )));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| CoreError::InvalidPolicy(format!("{what} pattern {pattern:?}: {e}")))
}

impl Compiled {
    pub(crate) fn new(p: &ProjectPolicy) -> Result<Compiled, CoreError> {
        if p.immutable.len() > MAX_RULES || p.retention.len() > MAX_RULES {
            return Err(CoreError::InvalidPolicy(format!(
                "at most {MAX_RULES} immutability and {MAX_RULES} retention rules"
            )));
        }
        let immutable = p
            .immutable
            .iter()
            .map(|r| {
                Ok((
                    glob("repositories", &r.repositories)?,
                    glob("tags", &r.tags)?,
                ))
            })
            .collect::<Result<_, CoreError>>()?;
        let retention = p
            .retention
            .iter()
            .map(|r| {
                match r.keep {
                    Keep::Newest(0) | Keep::PushedWithinDays(0) | Keep::PulledWithinDays(0) => {
                        return Err(CoreError::InvalidPolicy(
                            "a retention count or number of days must be at least 1".into(),
                        ));
                    }
                    _ => {}
                }
                Ok((
                    glob("repositories", &r.repositories)?,
                    glob("tags", &r.tags)?,
                    r.keep,
                ))
            })
            .collect::<Result<_, CoreError>>()?;
        Ok(Compiled {
            quota: p.quota_bytes,
            immutable,
            retention,
        })
    }

    /// Whether `tag` of `repo` may not be overwritten or deleted.
    pub(crate) fn is_immutable(&self, repo: &RepoName, tag: &str) -> bool {
        let r = repo.in_project();
        self.immutable
            .iter()
            .any(|(rp, tp)| rp.is_match(r) && tp.is_match(tag))
    }

    /// The tags retention removes from `tags` (one project's, grouped by
    /// repository, newest push first within each, as
    /// [`wharf_meta::MetaStore::project_tags`] returns them).
    fn retention_victims(&self, tags: &[TagInfo], now_ms: i64) -> Vec<TagInfo> {
        let mut out = Vec::new();
        if self.retention.is_empty() {
            return out;
        }
        for repo_tags in tags.chunk_by(|a, b| a.repo == b.repo) {
            let repo = &repo_tags[0].repo;
            let rules: Vec<_> = self
                .retention
                .iter()
                .filter(|(rp, _, _)| rp.is_match(repo.in_project()))
                .collect();
            // A repository no rule names is left alone.
            if rules.is_empty() {
                continue;
            }
            let mut kept = vec![false; repo_tags.len()];
            for (_, tp, keep) in &rules {
                let mut rank = 0u32;
                for (i, t) in repo_tags.iter().enumerate() {
                    if !tp.is_match(&t.tag) {
                        continue;
                    }
                    let k = match *keep {
                        Keep::Always => true,
                        Keep::Newest(n) => rank < n,
                        Keep::PushedWithinDays(d) => {
                            t.pushed_at_ms >= now_ms - i64::from(d) * DAY_MS
                        }
                        Keep::PulledWithinDays(d) => t
                            .pulled_at_ms
                            .is_some_and(|p| p >= now_ms - i64::from(d) * DAY_MS),
                    };
                    rank += 1;
                    kept[i] |= k;
                }
            }
            for (i, t) in repo_tags.iter().enumerate() {
                if !kept[i] && !self.is_immutable(repo, &t.tag) {
                    out.push(t.clone());
                }
            }
        }
        out
    }
}

/// What a retention run removed, or with `dry_run` would remove.
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Tags removed (or to remove), by repository and tag.
    pub tags: Vec<TagInfo>,
    /// Manifests that went with their last tag (in a dry run: that would).
    pub manifests: u64,
}

/// "1.5 MiB" for error messages.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) fn quota_message(project: &str, used: u64, adding: u64, limit: u64) -> String {
    format!(
        "quota exceeded: project {project} uses {} of its {} quota and this push needs {} more",
        human(used),
        human(limit),
        human(adding)
    )
}

impl Registry {
    /// A project's policy, compiled; `None` if it has none.
    pub(crate) async fn policy(&self, project: &str) -> Result<Option<Compiled>, CoreError> {
        match self.meta.project_policy(project).await? {
            Some(p) => Compiled::new(&p).map(Some),
            None => Ok(None),
        }
    }

    /// The policy as stored, if any.
    pub async fn project_policy(&self, project: &str) -> Result<Option<ProjectPolicy>, CoreError> {
        Ok(self.meta.project_policy(project).await?)
    }

    /// Validates and stores a project's policy (`None` removes it).
    pub async fn set_project_policy(
        &self,
        project: &str,
        policy: Option<&ProjectPolicy>,
    ) -> Result<(), CoreError> {
        if let Some(p) = policy {
            Compiled::new(p)?;
        }
        Ok(self.meta.set_project_policy(project, policy).await?)
    }

    /// `Immutable` if `tag` of `repo` is protected by its project's rules.
    pub(crate) async fn check_mutable(
        &self,
        repo: &RepoName,
        tags: &[String],
    ) -> Result<(), CoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        if let Some(p) = self.policy(repo.project()).await?
            && let Some(t) = tags.iter().find(|t| p.is_immutable(repo, t))
        {
            return Err(CoreError::Immutable(format!(
                "tag {t} of {repo} is immutable (a rule of project {})",
                repo.project()
            )));
        }
        Ok(())
    }

    /// Refuses an upload that would take its project past its quota: `size`
    /// bytes of blob `digest` (`None` while still uploading) in `repo`.
    pub(crate) async fn check_blob_quota(
        &self,
        repo: &RepoName,
        digest: Option<&Digest>,
        size: u64,
    ) -> Result<(), CoreError> {
        let project = repo.project();
        let Some(limit) = self.policy(project).await?.and_then(|p| p.quota) else {
            return Ok(());
        };
        if let Some(d) = digest
            && self.meta.blob_in_repo(repo, d).await?.is_some()
        {
            return Ok(());
        }
        let (used, _) = self.meta.project_usage(project).await?;
        if used.saturating_add(size) > limit {
            return Err(CoreError::QuotaExceeded(quota_message(
                project, used, size, limit,
            )));
        }
        Ok(())
    }

    /// Notes that a client pulled `digest` from `repo`, for retention's
    /// "pulled within" rules. Kept in memory; [`flush_pulls`](Self::flush_pulls)
    /// writes them.
    pub fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        let now = now_ms();
        let Ok(mut pulls) = self.pulls.lock() else {
            return;
        };
        if let Some(d) = pulls.get_mut(repo) {
            if let Some(t) = d.get_mut(digest) {
                *t = now;
                return;
            }
            d.insert(digest.clone(), now);
        } else {
            pulls.insert(repo.clone(), HashMap::from([(digest.clone(), now)]));
        }
    }

    /// Writes the pulls noted since the last flush.
    pub async fn flush_pulls(&self) -> Result<(), CoreError> {
        let taken = match self.pulls.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Err(CoreError::Internal("pull log poisoned".into())),
        };
        let batch: Vec<(RepoName, Digest, i64)> = taken
            .into_iter()
            .flat_map(|(r, ds)| ds.into_iter().map(move |(d, t)| (r.clone(), d, t)))
            .collect();
        Ok(self.meta.record_pulls(&batch).await?)
    }

    /// Applies (or with `dry_run` only reports) a project's retention rules:
    /// removes the tags no rule keeps, and each manifest that loses its last
    /// tag that way (with its referrers if `storage.delete.referrers`).
    /// Immutable tags are always kept; repositories no rule names are not
    /// touched; untagged manifests are the untagged policy's business.
    pub async fn apply_retention(
        &self,
        project: &str,
        dry_run: bool,
    ) -> Result<RetentionReport, CoreError> {
        self.flush_pulls().await?;
        let mut report = RetentionReport {
            dry_run,
            ..Default::default()
        };
        let Some(policy) = self.policy(project).await? else {
            return Ok(report);
        };
        let tags = self.meta.project_tags(project).await?;
        let victims = policy.retention_victims(&tags, now_ms());
        if dry_run {
            let edges = self.meta.project_index_children(project).await?;
            report.manifests = manifests_going(&tags, &victims, &edges);
            report.tags = victims;
            return Ok(report);
        }
        if !self.config.delete_enabled {
            return Err(CoreError::Unsupported(
                "deletion is disabled (storage.delete.enabled)".into(),
            ));
        }
        for t in victims {
            let Ok(tag) = t.tag.parse::<Tag>() else {
                continue;
            };
            let (tag_gone, manifest_gone) = self
                .meta
                .delete_tag_and_untagged(&t.repo, &tag, &t.digest)
                .await?;
            if manifest_gone {
                report.manifests += 1;
                if self.config.delete_referrers {
                    self.delete_referrers(&t.repo, &t.digest).await?;
                }
            }
            if tag_gone {
                report.tags.push(t);
            }
        }
        metrics::counter!("wharf_retention_tags_deleted_total").increment(report.tags.len() as u64);
        Ok(report)
    }
}

/// How many manifests deleting `victims` in order would remove, as
/// `delete_tag_and_untagged` decides it: a manifest goes when its last tag
/// does, unless an index still there lists it; an index that goes stops
/// holding its children, so a child whose last tag goes later goes too.
fn manifests_going(
    tags: &[TagInfo],
    victims: &[TagInfo],
    edges: &[(RepoName, Digest, Digest)],
) -> u64 {
    type Key<'a> = (&'a RepoName, &'a Digest);
    let mut tags_left: HashMap<Key, usize> = HashMap::new();
    for t in tags {
        *tags_left.entry((&t.repo, &t.digest)).or_default() += 1;
    }
    let mut listed_by: HashMap<Key, usize> = HashMap::new();
    let mut children: HashMap<Key, Vec<&Digest>> = HashMap::new();
    for (repo, index, child) in edges {
        *listed_by.entry((repo, child)).or_default() += 1;
        children.entry((repo, index)).or_default().push(child);
    }
    let mut gone = 0;
    for v in victims {
        let key = (&v.repo, &v.digest);
        let Some(left) = tags_left.get_mut(&key) else {
            continue;
        };
        *left = left.saturating_sub(1);
        if *left > 0 || listed_by.get(&key).is_some_and(|n| *n > 0) {
            continue;
        }
        gone += 1;
        for child in children.remove(&key).unwrap_or_default() {
            if let Some(n) = listed_by.get_mut(&(&v.repo, child)) {
                *n = n.saturating_sub(1);
            }
        }
    }
    gone
}

/// How often pulls noted in memory are written.
pub const PULL_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_meta::{RetentionRule, TagRule};

    fn info(repo: &str, tag: &str, pushed_days_ago: i64, pulled_days_ago: Option<i64>) -> TagInfo {
        let now = 1000 * DAY_MS;
        TagInfo {
            repo: repo.parse().unwrap(),
            tag: tag.into(),
            digest: Digest::sha256_of(format!("{repo}:{tag}").as_bytes()),
            pushed_at_ms: now - pushed_days_ago * DAY_MS,
            pulled_at_ms: pulled_days_ago.map(|d| now - d * DAY_MS),
        }
    }

    fn rule(repos: &str, tags: &str, keep: Keep) -> RetentionRule {
        RetentionRule {
            repositories: repos.into(),
            tags: tags.into(),
            keep,
        }
    }

    fn victims(p: &ProjectPolicy, tags: &[TagInfo]) -> Vec<String> {
        Compiled::new(p)
            .unwrap()
            .retention_victims(tags, 1000 * DAY_MS)
            .into_iter()
            .map(|t| format!("{}:{}", t.repo, t.tag))
            .collect()
    }

    #[test]
    fn a_dry_run_counts_the_manifests_a_real_run_removes() {
        let index = info("team/app", "multi", 1, None);
        let child = info("team/app", "amd64", 2, None);
        let alias = TagInfo {
            tag: "amd64-alias".into(),
            ..child.clone()
        };
        // The child's digest, in another repository.
        let other = TagInfo {
            repo: "team/other".parse().unwrap(),
            ..child.clone()
        };
        let tags = vec![index.clone(), child.clone(), alias.clone(), other.clone()];
        let edges = vec![(
            index.repo.clone(),
            index.digest.clone(),
            child.digest.clone(),
        )];
        let going = |v: &[&TagInfo]| {
            let v: Vec<TagInfo> = v.iter().map(|t| (*t).clone()).collect();
            manifests_going(&tags, &v, &edges)
        };
        // The index still lists the child when its last tag goes: it stays.
        assert_eq!(going(&[&child, &alias, &index]), 1);
        // The index went first: the child goes with its last tag.
        assert_eq!(going(&[&index, &child, &alias]), 2);
        // A tag goes, another still points at the manifest.
        assert_eq!(going(&[&alias]), 0);
        // Edges are per repository: the same digest elsewhere is not listed.
        assert_eq!(going(&[&other]), 1);
        assert_eq!(going(&[]), 0);
    }

    #[test]
    fn retention_rules() {
        // Newest first per repository, as the store returns them.
        let tags = vec![
            info("team/app", "v5", 1, None),
            info("team/app", "v4", 2, Some(1)),
            info("team/app", "dev-3", 3, None),
            info("team/app", "v3", 10, None),
            info("team/app", "v2", 40, Some(5)),
            info("team/app", "v1", 100, Some(50)),
            info("team/other/x", "old", 100, None),
        ];
        let newest2 = ProjectPolicy {
            retention: vec![rule("app", "v*", Keep::Newest(2))],
            ..Default::default()
        };
        // dev-3 matches no rule of a named repository: it goes; team/other is not named.
        assert_eq!(
            victims(&newest2, &tags),
            [
                "team/app:dev-3",
                "team/app:v3",
                "team/app:v2",
                "team/app:v1"
            ]
        );
        let union = ProjectPolicy {
            retention: vec![
                rule("**", "v*", Keep::Newest(1)),
                rule("**", "**", Keep::PulledWithinDays(7)),
                rule("**", "dev-*", Keep::Always),
                rule("other/*", "*", Keep::PushedWithinDays(365)),
            ],
            ..Default::default()
        };
        assert_eq!(victims(&union, &tags), ["team/app:v3", "team/app:v1"]);
        let immutable = ProjectPolicy {
            retention: union.retention.clone(),
            immutable: vec![TagRule {
                repositories: "**".into(),
                tags: "v1".into(),
            }],
            ..Default::default()
        };
        assert_eq!(victims(&immutable, &tags), ["team/app:v3"]);
        // `*` does not cross `/`.
        let star = ProjectPolicy {
            retention: vec![rule("*", "*", Keep::Newest(1))],
            ..Default::default()
        };
        assert_eq!(
            victims(&star, &tags),
            [
                "team/app:v4",
                "team/app:dev-3",
                "team/app:v3",
                "team/app:v2",
                "team/app:v1"
            ]
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        for p in [
            ProjectPolicy {
                retention: vec![rule("**", "**", Keep::Newest(0))],
                ..Default::default()
            },
            ProjectPolicy {
                immutable: vec![TagRule {
                    repositories: "[".into(),
                    tags: "x".into(),
                }],
                ..Default::default()
            },
            ProjectPolicy {
                immutable: vec![TagRule {
                    repositories: "**".into(),
                    tags: String::new(),
                }],
                ..Default::default()
            },
            ProjectPolicy {
                retention: vec![rule("**", "**", Keep::Always); MAX_RULES + 1],
                ..Default::default()
            },
        ] {
            assert!(
                matches!(Compiled::new(&p), Err(CoreError::InvalidPolicy(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 * 1024 * 1024), "10.0 MiB");
    }
}
