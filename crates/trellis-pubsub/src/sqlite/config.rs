//! The broker's configuration: its metadata, parsed and checked once at open.

use std::time::Duration;

use crate::{Metadata, PubSubError};

/// The component configuration, parsed from metadata.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) connection: String,
    pub(super) ack_deadline: Duration,
    pub(super) retention: Duration,
    pub(super) cleanup_interval: Option<Duration>,
    pub(super) poll_interval: Duration,
    pub(super) busy_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) prefetch: usize,
    /// A new group starts at the oldest message its topic holds (`deliverPolicy` `all`,
    /// the default, as Dapr's Redis and JetStream components) rather than at its first
    /// subscribe (`new`).
    pub(super) replay: bool,
}

impl Config {
    pub(super) fn from_metadata(md: &Metadata) -> Result<Self, PubSubError> {
        let connection = md.require("connectionString")?.to_string();
        let retention = match md.get("retention") {
            None => Duration::from_secs(24 * 3600),
            Some(_) => md.duration("retention")?.unwrap_or(Duration::ZERO),
        };
        let cleanup_interval = match md.get("cleanupInterval") {
            None => Some(Duration::from_secs(300)),
            Some(_) => md.duration("cleanupInterval")?,
        };
        Ok(Config {
            connection,
            ack_deadline: md.positive_duration("ackDeadline", Duration::from_secs(30))?,
            retention,
            cleanup_interval,
            poll_interval: md.positive_duration("pollInterval", Duration::from_millis(5))?,
            busy_timeout: md.positive_duration("busyTimeout", Duration::from_secs(5))?,
            timeout: md.positive_duration("timeout", Duration::from_secs(20))?,
            prefetch: md.usize("prefetch", 256, 1..=4096)?,
            replay: match md
                .get("deliverPolicy")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("all") => true,
                Some("new") => false,
                Some(other) => {
                    return Err(PubSubError::InvalidRequest(format!(
                        "metadata deliverPolicy: {other:?} is not one of all, new"
                    )));
                }
            },
        })
    }

    /// In-memory databases get one connection (a second one would be another database)
    /// and no poller (no other process can see them).
    pub(super) fn in_memory(&self) -> bool {
        trellis_sqlite::in_memory(&self.connection)
    }
}

#[cfg(test)]
mod tests {
    use super::super::poller::bell_path;
    use super::*;

    #[test]
    fn config() {
        assert!(Config::from_metadata(&Metadata::default()).is_err());
        let c = Config::from_metadata(&Metadata::from_pairs([("ConnectionString", "/x/p.db")]))
            .unwrap();
        assert_eq!(c.ack_deadline, Duration::from_secs(30));
        assert_eq!(c.retention, Duration::from_secs(86400));
        assert_eq!(c.cleanup_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.poll_interval, Duration::from_millis(5));
        assert_eq!(c.prefetch, 256);
        assert!(!c.in_memory());
        assert_eq!(bell_path(&c.connection), Some("/x/p.db-bell".into()));
        let c = Config::from_metadata(&Metadata::from_pairs([
            ("connectionString", ":memory:"),
            ("ackDeadline", "2s"),
            ("retention", "0"),
            ("cleanupInterval", "-1"),
            ("pollInterval", "1ms"),
            ("prefetch", "1"),
        ]))
        .unwrap();
        assert!(c.in_memory());
        assert_eq!(bell_path(&c.connection), None);
        assert_eq!(c.ack_deadline, Duration::from_secs(2));
        assert_eq!(c.retention, Duration::ZERO);
        assert_eq!(c.cleanup_interval, None);
        assert_eq!(c.prefetch, 1);
        for (k, v) in [
            ("ackDeadline", "0"),
            ("pollInterval", "x"),
            ("prefetch", "0"),
        ] {
            let md = Metadata::from_pairs([("connectionString", "a"), (k, v)]);
            let err = Config::from_metadata(&md).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }
}
