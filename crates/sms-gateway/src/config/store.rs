//! Where sessions and messages are kept (a SQLite file, PostgreSQL or Supabase), and for how
//! long.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::problem::Problem;
use super::reader::Reader;
use super::secret::Secret;

const DEFAULT_DATABASE_URL: &str = "sqlite://data/soul.db";

/// Where sessions and messages are kept.
#[derive(Debug, Clone)]
pub(crate) enum StoreConfig {
    /// A SQLite file, e.g. `sqlite://data/soul.db`.
    Sqlite {
        /// The `sqlite:` URL.
        url: String,
    },
    /// PostgreSQL; the URL may hold a password, so it is a secret.
    Postgres {
        /// The `postgres://` or `postgresql://` URL.
        url: Secret,
    },
    /// Supabase over its REST API, with its service-role key.
    Supabase {
        /// The project URL.
        url: String,
        /// The service-role key.
        service_key: Secret,
    },
}

/// The path of the SQLite file a `sqlite:` URL names: `sqlite://data/soul.db` and
/// `sqlite:data/soul.db` are relative, `sqlite:///var/soul.db` is absolute; a query is ignored.
pub(crate) fn sqlite_path(url: &str) -> PathBuf {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    PathBuf::from(path)
}

impl Reader<'_> {
    /// `RETENTION_DAYS`: a whole number of days, or `off` (the default: see the README's
    /// Retention); longer than a session lasts (`session_timeout`), or retention would delete
    /// the messages of conversations still going on.
    pub(super) fn retention_days(&mut self, session_timeout: Duration) -> Option<NonZeroU32> {
        let days = self
            .parsed(
                "RETENTION_DAYS",
                "not a whole number of days from 1, or off",
                |text| match text {
                    "off" => Some(None),
                    _ => text.parse::<NonZeroU32>().ok().map(Some),
                },
            )
            .flatten()?;
        let kept = Duration::from_secs(u64::from(days.get()) * 24 * 60 * 60);
        if kept <= session_timeout {
            self.problems.push(Problem::Conflict {
                keys: "RETENTION_DAYS and SESSION_TIMEOUT".to_owned(),
                reason: "messages must be kept longer than a session lasts, or retention deletes                          those of conversations still going on",
            });
        }
        Some(days)
    }

    pub(super) fn store(&mut self) -> Option<StoreConfig> {
        let service_key = self.supabase_key();
        let supabase_url = self.url("SUPABASE_URL");
        let key_set = self.get("SUPABASE_SERVICE_KEY").is_some()
            || self.get("SUPABASE_SERVICE_ROLE_KEY").is_some();
        let supabase_set = self.get("SUPABASE_URL").is_some() || key_set;
        let database_url = self.get("DATABASE_URL").map(str::to_owned);

        if supabase_set {
            if database_url.is_some() {
                let set: Vec<&str> = [
                    "SUPABASE_URL",
                    "SUPABASE_SERVICE_KEY",
                    "SUPABASE_SERVICE_ROLE_KEY",
                ]
                .into_iter()
                .filter(|key| self.get(key).is_some())
                .collect();
                self.problems.push(Problem::Conflict {
                    keys: format!("DATABASE_URL and {}", set.join(", ")),
                    reason: "set one store: DATABASE_URL for SQLite or PostgreSQL, or SUPABASE_URL \
                             and SUPABASE_SERVICE_KEY for Supabase",
                });
                return None;
            }
            const WHY: &str = "to use Supabase";
            if self.get("SUPABASE_URL").is_none() {
                self.missing("SUPABASE_URL", WHY);
            }
            if !key_set {
                self.missing(
                    "SUPABASE_SERVICE_KEY",
                    "(or SUPABASE_SERVICE_ROLE_KEY) to use Supabase",
                );
            }
            return Some(StoreConfig::Supabase {
                url: supabase_url?,
                service_key: service_key?,
            });
        }

        let url = database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if url.starts_with("sqlite:") {
            Some(StoreConfig::Sqlite { url })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreConfig::Postgres {
                url: Secret::new(url),
            })
        } else {
            self.malformed(
                "DATABASE_URL",
                "neither a sqlite: nor a postgres:// or postgresql:// URL",
            );
            None
        }
    }

    /// `SUPABASE_SERVICE_KEY`, or its other name `SUPABASE_SERVICE_ROLE_KEY`; both may be set
    /// only to the same value.
    fn supabase_key(&mut self) -> Option<Secret> {
        let key = self.get("SUPABASE_SERVICE_KEY");
        let role_key = self.get("SUPABASE_SERVICE_ROLE_KEY");
        match (key, role_key) {
            (Some(key), Some(role_key)) if key != role_key => {
                self.problems.push(Problem::Conflict {
                    keys: "SUPABASE_SERVICE_KEY and SUPABASE_SERVICE_ROLE_KEY".to_owned(),
                    reason: "both are set, to different values",
                });
                None
            }
            (Some(key), _) | (None, Some(key)) => Some(Secret::new(key)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{problems, values};
    use crate::config::{Config, Level};

    #[test]
    fn supabase_selection() {
        for key_name in ["SUPABASE_SERVICE_KEY", "SUPABASE_SERVICE_ROLE_KEY"] {
            let values = values(&[("SUPABASE_URL", "https://p.supabase.co/"), (key_name, "k")]);
            let config = Config::from_values(&values, Level::Migrate).unwrap();
            assert!(
                matches!(&config.store, StoreConfig::Supabase { url, service_key }
                    if url == "https://p.supabase.co" && service_key.expose() == "k"),
                "{key_name}"
            );
        }
        let same = values(&[
            ("SUPABASE_URL", "https://p.supabase.co"),
            ("SUPABASE_SERVICE_KEY", "k"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k"),
        ]);
        assert!(Config::from_values(&same, Level::Migrate).is_ok());
        let no_key = values(&[("SUPABASE_URL", "https://p.supabase.co")]);
        assert!(matches!(
            problems(&no_key, Level::Migrate).as_slice(),
            [Problem::Missing {
                key: "SUPABASE_SERVICE_KEY",
                ..
            }]
        ));
        let no_url = values(&[("SUPABASE_SERVICE_ROLE_KEY", "k")]);
        assert!(matches!(
            problems(&no_url, Level::Migrate).as_slice(),
            [Problem::Missing {
                key: "SUPABASE_URL",
                ..
            }]
        ));
    }

    /// Messages are kept until erased unless RETENTION_DAYS says otherwise, and then longer
    /// than a session lasts.
    #[test]
    fn retention_is_off_by_default_and_outlasts_a_session() {
        let config = Config::from_values(&values(&[]), Level::Migrate).unwrap();
        assert_eq!(config.retention_days, None);
        let config =
            Config::from_values(&values(&[("RETENTION_DAYS", "off")]), Level::Migrate).unwrap();
        assert_eq!(config.retention_days, None);
        let config =
            Config::from_values(&values(&[("RETENTION_DAYS", "90")]), Level::Migrate).unwrap();
        assert_eq!(config.retention_days, NonZeroU32::new(90));
        for bad in ["0", "-1", "90d", "forever"] {
            assert!(
                problems(&values(&[("RETENTION_DAYS", bad)]), Level::Migrate)
                    .iter()
                    .any(
                        |p| matches!(p, Problem::Malformed { key, .. } if key == "RETENTION_DAYS")
                    ),
                "{bad}"
            );
        }
        let found = problems(
            &values(&[("RETENTION_DAYS", "2"), ("SESSION_TIMEOUT", "3d")]),
            Level::Migrate,
        );
        assert!(
            matches!(
                found.as_slice(),
                [Problem::Conflict { keys, .. }] if keys == "RETENTION_DAYS and SESSION_TIMEOUT"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn database_url_schemes() {
        for (url, postgres) in [
            ("sqlite://data/soul.db", false),
            ("sqlite::memory:", false),
            ("postgres://db/soul", true),
            ("postgresql://db/soul", true),
        ] {
            let config =
                Config::from_values(&values(&[("DATABASE_URL", url)]), Level::Migrate).unwrap();
            assert_eq!(
                matches!(config.store, StoreConfig::Postgres { .. }),
                postgres,
                "{url}"
            );
        }
    }

    #[test]
    fn sqlite_urls_name_files() {
        for (url, path) in [
            ("sqlite://data/soul.db", "data/soul.db"),
            ("sqlite:data/soul.db", "data/soul.db"),
            ("sqlite:///var/lib/soul.db", "/var/lib/soul.db"),
            ("sqlite://soul.db?mode=rwc", "soul.db"),
        ] {
            assert_eq!(sqlite_path(url), std::path::Path::new(path), "{url}");
        }
    }
}
