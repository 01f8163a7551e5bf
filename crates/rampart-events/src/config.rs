//! The `[events]` section of `rampart.toml`.
//!
//! ```toml
//! [events]
//! queue_size = 65536
//! max_age = "30d"
//! max_size = "20GiB"
//!
//! [[events.sinks]]
//! type = "syslog"
//! address = "siem.example:6514"
//! tls = true
//! format = "cef"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Settings for the event pipeline, store and sinks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Record events at all. `false` turns the store, its writer and the
    /// sinks off and the gateway skips building events (for measuring what
    /// logging costs, or a gateway that only forwards).
    pub enabled: bool,
    /// Events held in memory between the data path and the writer.
    pub queue_size: usize,
    /// Delete events older than this (`30d`, `12h`); unset keeps them until `max_size`.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Keep the database under this size by deleting the oldest events.
    pub max_size: Option<ByteSize>,
    /// fsync every commit (survives power loss, slower); without it a commit
    /// survives a crash of the process but not of the machine.
    pub full_sync: bool,
    /// Memory the store writer's SQLite page cache may hold. It fills with
    /// the pages the writer touches, so the gateway's resident memory grows
    /// with the database until it reaches this; then it stays flat.
    pub page_cache: ByteSize,
    /// Disk the overflow spool may use when the store falls behind.
    pub spool_max_size: ByteSize,
    /// Write every event to the write-ahead journal (`DATA_DIR/journal/`)
    /// within about a millisecond, so a crash of the process loses none that
    /// the store had not committed yet. `false` only to measure what it costs.
    pub journal: bool,
    /// How often the journal is fsynced: on power loss (not on a crash of the
    /// process) at most this much of the newest events is lost.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    pub sinks: Vec<SinkConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            queue_size: 65_536,
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_size: None,
            full_sync: false,
            page_cache: ByteSize(crate::store::DEFAULT_PAGE_CACHE_BYTES),
            spool_max_size: ByteSize(1 << 30),
            journal: true,
            fsync_interval: Duration::from_secs(1),
            sinks: Vec::new(),
        }
    }
}

/// Kinds of export destination.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// NDJSON (OCSF) to a file, rotated by size.
    File,
    /// Squid native access-log lines to a file, rotated by size.
    Squid,
    /// Syslog (RFC 5424) over TCP or TLS, octet-counted framing (RFC 6587).
    Syslog,
    /// HTTP batches in Splunk HEC shape.
    Hec,
}

/// Payload of syslog messages.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// The OCSF JSON document.
    #[default]
    Json,
    /// ArcSight Common Event Format.
    Cef,
}

/// One `[[events.sinks]]` entry. One flat table per sink (rather than one type
/// per kind) so unknown keys are still rejected; [`SinkConfig::validate`]
/// checks which keys the kind needs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// Names the sink's spool directory and its metrics.
    pub name: String,
    /// file, squid: the file written (rotated to `path.1`, `path.2`...).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// file, squid: rotate at this size (default 100MiB).
    #[serde(default)]
    pub rotate_size: Option<ByteSize>,
    /// file, squid: rotated files kept (default 5).
    #[serde(default)]
    pub keep: Option<usize>,
    /// syslog: `host:port` of the collector.
    #[serde(default)]
    pub address: Option<String>,
    /// syslog: connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// syslog, hec: name checked against the collector's certificate (default: the host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// syslog: `json` (default) or `cef`.
    #[serde(default)]
    pub format: SyslogFormat,
    /// syslog: RFC 5424 HOSTNAME (default: this machine's name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// hec: full URL, e.g. `https://splunk.example:8088/services/collector/event`.
    #[serde(default)]
    pub url: Option<String>,
    /// hec: sent as `Authorization: Splunk TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// hec: `sourcetype` (default `ocsf`).
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// hec: `index`.
    #[serde(default)]
    pub index: Option<String>,
    /// syslog, hec: PEM file of extra roots trusted for the collector (system roots always are).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Only events matching this query are exported (empty: all).
    #[serde(default)]
    pub query: String,
    /// Disk the sink's spool may use while the destination is unreachable (default 256MiB).
    #[serde(default = "default_sink_spool")]
    pub spool_max_size: ByteSize,
    /// Events per delivery (default 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// First retry delay (default 500ms); doubles up to `retry_max` (default 60s).
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

fn default_sink_spool() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_batch() -> usize {
    500
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

impl SinkConfig {
    /// Check that the keys this kind needs are present and no other kind's keys are set.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "sink name `{name}` must be letters, digits, `-` or `_`"
            ));
        }
        let need = |present: bool, key: &str| {
            if present {
                Ok(())
            } else {
                Err(format!("sink `{name}`: type {:?} needs `{key}`", self.kind).to_lowercase())
            }
        };
        let forbid = |present: bool, key: &str| {
            if present {
                Err(format!(
                    "sink `{name}`: `{key}` does not apply to this sink type"
                ))
            } else {
                Ok(())
            }
        };
        let file_keys = self.path.is_some() || self.rotate_size.is_some() || self.keep.is_some();
        let syslog_keys = self.address.is_some() || self.tls || self.hostname.is_some();
        let hec_keys = self.url.is_some()
            || self.token.is_some()
            || self.sourcetype.is_some()
            || self.index.is_some();
        match self.kind {
            SinkKind::File | SinkKind::Squid => {
                need(self.path.is_some(), "path")?;
                forbid(syslog_keys, "address/tls/hostname")?;
                forbid(hec_keys, "url/token/sourcetype/index")?;
                forbid(self.ca_file.is_some(), "ca_file")?;
            }
            SinkKind::Syslog => {
                need(self.address.is_some(), "address")?;
                forbid(file_keys, "path/rotate_size/keep")?;
                forbid(hec_keys, "url/token/sourcetype/index")?;
            }
            SinkKind::Hec => {
                need(self.url.is_some(), "url")?;
                need(self.token.is_some(), "token")?;
                forbid(file_keys, "path/rotate_size/keep")?;
                forbid(syslog_keys, "address/tls/hostname")?;
            }
        }
        if self.batch_size == 0 {
            return Err(format!("sink `{name}`: batch_size must be at least 1"));
        }
        crate::query::parse(&self.query)
            .map_err(|e| format!("sink `{name}`: {}", e.render(&self.query)))?;
        Ok(())
    }
}

impl EventsConfig {
    /// Check every sink, and that sink names are unique.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.sinks {
            s.validate()?;
            if !seen.insert(s.name.as_str()) {
                return Err(format!("two sinks are named `{}`", s.name));
            }
        }
        if self.queue_size == 0 {
            return Err("events.queue_size must be at least 1".into());
        }
        if self.page_cache.0 < crate::store::MIN_PAGE_CACHE_BYTES {
            return Err(format!(
                "events.page_cache = {} bytes is below 1MiB: the writer would reread its index pages on every insert (use e.g. \"16MiB\")",
                self.page_cache.0
            ));
        }
        if self.fsync_interval < Duration::from_millis(10) {
            return Err(format!(
                "events.fsync_interval = {:?} is below 10ms: every fsync would stall the disk (use e.g. \"1s\")",
                self.fsync_interval
            ));
        }
        Ok(())
    }
}

/// A size in bytes: a number, or a string such as `512MiB`, `20GB`, `100k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Option<ByteSize> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size `{s}` (write a number of bytes or e.g. `512MiB`, `20GB`)"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        events: EventsConfig,
    }

    #[test]
    fn full_section_with_every_sink_parses() {
        let text = r#"
[events]
queue_size = 1000
max_age = "7d"
max_size = "2GiB"
full_sync = true
fsync_interval = "250ms"

[[events.sinks]]
type = "file"
name = "ndjson"
path = "/var/log/rampart/events.ndjson"
rotate_size = "50MiB"
keep = 3

[[events.sinks]]
type = "squid"
name = "access"
path = "/var/log/rampart/access.log"

[[events.sinks]]
type = "syslog"
name = "siem"
address = "127.0.0.1:6514"
tls = true
format = "cef"
query = "action = block"
retry_max = "30s"

[[events.sinks]]
type = "hec"
name = "splunk"
url = "http://127.0.0.1:8088/services/collector/event"
token = "t"
batch_size = 100
"#;
        let root: Root = toml::from_str(text).unwrap();
        let c = root.events;
        assert_eq!(c.queue_size, 1000);
        assert_eq!(c.max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.max_size, Some(ByteSize(2 << 30)));
        assert_eq!(c.fsync_interval, Duration::from_millis(250));
        assert!(c.journal);
        assert_eq!(c.sinks.len(), 4);
        c.validate().unwrap();
        let s = &c.sinks[2];
        assert_eq!(s.kind, SinkKind::Syslog);
        assert_eq!(s.format, SyslogFormat::Cef);
        assert_eq!(s.query, "action = block");
        assert_eq!(s.retry_max, Duration::from_secs(30));
        assert_eq!(c.sinks[3].batch_size, 100);
    }

    #[test]
    fn page_cache_parses_defaults_to_16_mib_and_refuses_below_1_mib() {
        let root: Root = toml::from_str("[events]\npage_cache = \"64MiB\"\n").unwrap();
        assert_eq!(root.events.page_cache, ByteSize(64 << 20));
        root.events.validate().unwrap();
        let root: Root = toml::from_str("[events]\nqueue_size = 10\n").unwrap();
        assert_eq!(root.events.page_cache, ByteSize(16 << 20));
        let root: Root = toml::from_str("[events]\npage_cache = \"512KiB\"\n").unwrap();
        let err = root.events.validate().unwrap_err();
        assert!(err.contains("events.page_cache"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Root>("[events]\nqueue_sise = 3\n").is_err());
        let bad_sink =
            "[[events.sinks]]\ntype = \"file\"\nname = \"a\"\npath = \"/x\"\nrotat = 1\n";
        assert!(toml::from_str::<Root>(bad_sink).is_err());
    }

    #[test]
    fn sink_missing_its_destination_or_with_foreign_keys_is_invalid() {
        let root: Root =
            toml::from_str("[[events.sinks]]\ntype = \"hec\"\nname = \"h\"\nurl = \"http://x\"\n")
                .unwrap();
        let err = root.events.validate().unwrap_err();
        assert!(err.contains("needs `token`"), "{err}");
        let root: Root = toml::from_str(
            "[[events.sinks]]\ntype = \"file\"\nname = \"f\"\npath = \"/x\"\naddress = \"a:1\"\n",
        )
        .unwrap();
        assert!(root
            .events
            .validate()
            .unwrap_err()
            .contains("does not apply"));
        let root: Root = toml::from_str(
            "[[events.sinks]]\ntype = \"file\"\nname = \"f\"\npath = \"/x\"\nquery = \"usr = a\"\n",
        )
        .unwrap();
        assert!(root.events.validate().unwrap_err().contains("column 1"));
    }

    #[test]
    fn sizes_accept_units() {
        assert_eq!(ByteSize::parse("512MiB"), Some(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("3 GB"), Some(ByteSize(3_000_000_000)));
        assert_eq!(ByteSize::parse("12parsecs"), None);
    }
}
