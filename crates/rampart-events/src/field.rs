//! The searchable fields: one name shared by the query language, the store's
//! columns, the table and flat JSON outputs.

use crate::event::Event;

/// How a field's values compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Integer,
    /// A comma-separated set (groups): `eq` means "contains this member".
    Set,
}

/// A searchable event field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Flow,
    Type,
    Action,
    User,
    Group,
    Device,
    Process,
    SrcIp,
    DstIp,
    DstPort,
    Host,
    Url,
    Method,
    Status,
    Category,
    App,
    Rule,
    RuleId,
    Revision,
    Tls,
    Bypass,
    BytesIn,
    BytesOut,
    Severity,
    Alert,
    /// The fleet gateway that logged the event (`unmapped.gateway`): set by
    /// the server as it takes events from the fleet's stream; missing in an
    /// all-in-one store.
    Gateway,
    Reporter,
}

impl Field {
    pub const ALL: [Field; 28] = [
        Field::Id,
        Field::Flow,
        Field::Type,
        Field::Action,
        Field::User,
        Field::Group,
        Field::Device,
        Field::Process,
        Field::SrcIp,
        Field::DstIp,
        Field::DstPort,
        Field::Host,
        Field::Url,
        Field::Method,
        Field::Status,
        Field::Category,
        Field::App,
        Field::Rule,
        Field::RuleId,
        Field::Revision,
        Field::Tls,
        Field::Bypass,
        Field::BytesIn,
        Field::BytesOut,
        Field::Severity,
        Field::Alert,
        Field::Gateway,
        Field::Reporter,
    ];

    /// The name used in queries and output; also the store column.
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Flow => "flow",
            Field::Type => "type",
            Field::Action => "action",
            Field::User => "user",
            Field::Group => "group",
            Field::Device => "device",
            Field::Process => "process",
            Field::SrcIp => "src_ip",
            Field::DstIp => "dst_ip",
            Field::DstPort => "dst_port",
            Field::Host => "host",
            Field::Url => "url",
            Field::Method => "method",
            Field::Status => "status",
            Field::Category => "category",
            Field::App => "app",
            Field::Rule => "rule",
            Field::RuleId => "rule_id",
            Field::Revision => "revision",
            Field::Tls => "tls",
            Field::Bypass => "bypass",
            Field::BytesIn => "bytes_in",
            Field::BytesOut => "bytes_out",
            Field::Severity => "severity",
            Field::Alert => "alert",
            Field::Gateway => "gateway",
            Field::Reporter => "reporter",
        }
    }

    /// The SQL column (quoted where the name is an SQL keyword).
    pub fn column(self) -> &'static str {
        match self {
            Field::Group => "groups",
            Field::User => "user_name",
            other => other.name(),
        }
    }

    pub fn kind(self) -> FieldKind {
        match self {
            Field::DstPort | Field::Status | Field::BytesIn | Field::BytesOut => FieldKind::Integer,
            Field::Group => FieldKind::Set,
            _ => FieldKind::Text,
        }
    }

    /// Accepts the field name and a few aliases users type.
    pub fn parse(name: &str) -> Option<Field> {
        let lower = name.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "groups" => Some(Field::Group),
            "verdict" => Some(Field::Action),
            "hostname" | "domain" => Some(Field::Host),
            "code" => Some(Field::Status),
            "port" => Some(Field::DstPort),
            "alert_id" => Some(Field::Alert),
            "flow_id" => Some(Field::Flow),
            _ => None,
        };
        alias.or_else(|| Field::ALL.into_iter().find(|f| f.name() == lower))
    }

    /// The closest field name, for "did you mean" hints.
    pub fn suggest(name: &str) -> Option<&'static str> {
        let lower = name.to_ascii_lowercase();
        Field::ALL
            .into_iter()
            .map(|f| (edit_distance(&lower, f.name()), f.name()))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n)
    }

    /// This field's value in `event`, as text (integers in decimal, groups comma-joined).
    pub fn text(self, e: &Event) -> Option<String> {
        match self {
            Field::Id => Some(e.id().to_string()),
            Field::Flow => e.flow_id().map(|f| f.to_string()),
            Field::Type => e.event_type().map(|t| t.as_str().to_string()),
            Field::Action => e.verdict().map(|v| v.as_str().to_string()),
            Field::User => e.user_name().map(str::to_string),
            Field::Group => {
                let groups: Vec<&str> = e.groups().collect();
                (!groups.is_empty()).then(|| groups.join(","))
            }
            Field::Device => e.device_name().map(str::to_string),
            Field::Process => e.process_name().map(str::to_string),
            Field::SrcIp => e.src_endpoint.as_ref().and_then(|s| s.ip.clone()),
            Field::DstIp => e.dst_endpoint.as_ref().and_then(|s| s.ip.clone()),
            Field::Host => e.host().map(str::to_string),
            Field::Url => e.url().map(str::to_string),
            Field::Method => e.http_request.as_ref().and_then(|r| r.http_method.clone()),
            Field::Category => e.unmapped.category.clone(),
            Field::App => e.unmapped.app.clone(),
            Field::Rule => e.policy.as_ref().and_then(|p| p.name.clone()),
            Field::RuleId => e.policy.as_ref().and_then(|p| p.uid.clone()),
            Field::Revision => e.policy.as_ref().and_then(|p| p.version.clone()),
            Field::Tls => e.unmapped.tls_decision.map(|t| t.as_str().to_string()),
            Field::Bypass => e
                .unmapped
                .bypass
                .as_ref()
                .map(|b| b.at.as_str().to_string()),
            Field::Severity => Some(e.severity.to_ascii_lowercase()),
            Field::Alert => e.alert_id().map(str::to_string),
            Field::Gateway => e.unmapped.gateway.clone(),
            Field::Reporter => e.metadata.log_provider.clone(),
            Field::DstPort | Field::Status | Field::BytesIn | Field::BytesOut => {
                self.integer(e).map(|n| n.to_string())
            }
        }
    }

    /// This field's value as an integer, for integer fields.
    pub fn integer(self, e: &Event) -> Option<i64> {
        match self {
            Field::DstPort => e.dst_endpoint.as_ref().and_then(|d| d.port).map(i64::from),
            Field::Status => e.http_response.as_ref().map(|r| i64::from(r.code)),
            Field::BytesIn => e.traffic.as_ref().map(|t| t.bytes_in as i64),
            Field::BytesOut => e.traffic.as_ref().map(|t| t.bytes_out as i64),
            _ => None,
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_parses_back_from_its_name() {
        for f in Field::ALL {
            assert_eq!(Field::parse(f.name()), Some(f));
        }
    }

    #[test]
    fn misspelt_field_gets_a_suggestion() {
        assert_eq!(Field::suggest("catgory"), Some("category"));
        assert_eq!(Field::suggest("zzzzzzzz"), None);
    }
}
