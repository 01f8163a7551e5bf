//! The typed columns of the `rampart_events` table: one per query field, from a
//! fixed mapping (never from user input), holding what the in-memory query
//! evaluation compares against, so SQL and `Query::matches` agree.
//!
//! Text fields are stored folded (`rampart_events::query::fold`, the one the
//! query language applies to both sides) in `COLLATE "C"` columns: equality, order
//! and `like` then behave byte for byte as in memory. Groups are a set: the
//! members (split on `,`, folded as `eq` compares them) in a
//! `text[]`, and the joined text for `like`.

use std::borrow::Cow;

use rampart_events::field::{Field, FieldKind};
use rampart_events::query::fold;
use rampart_events::Event;

/// Where a query field lives in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// The `uuid` primary key; compared as its canonical text.
    Id,
    /// A lowercased `text COLLATE "C"` column.
    Text(&'static str),
    /// A `bigint` column.
    Integer(&'static str),
    /// `group_members text[]` (never NULL: `{}` without groups) and `group_text`.
    Groups,
}

/// The column of each query field.
pub fn column(field: Field) -> Column {
    match field {
        Field::Id => Column::Id,
        Field::Group => Column::Groups,
        Field::DstPort => Column::Integer("dst_port"),
        Field::Status => Column::Integer("status"),
        Field::BytesIn => Column::Integer("bytes_in"),
        Field::BytesOut => Column::Integer("bytes_out"),
        Field::Flow => Column::Text("flow"),
        Field::Type => Column::Text("event_type"),
        Field::Action => Column::Text("action"),
        Field::User => Column::Text("user_name"),
        Field::Device => Column::Text("device"),
        Field::Process => Column::Text("process"),
        Field::SrcIp => Column::Text("src_ip"),
        Field::DstIp => Column::Text("dst_ip"),
        Field::Host => Column::Text("host"),
        Field::Url => Column::Text("url"),
        Field::Method => Column::Text("method"),
        Field::Category => Column::Text("category"),
        Field::App => Column::Text("app"),
        Field::Rule => Column::Text("rule"),
        Field::RuleId => Column::Text("rule_id"),
        Field::Revision => Column::Text("revision"),
        Field::Tls => Column::Text("tls"),
        Field::Bypass => Column::Text("bypass"),
        Field::Severity => Column::Text("severity"),
        Field::Alert => Column::Text("alert"),
        Field::Reporter => Column::Text("reporter"),
        Field::Gateway => Column::Text("gateway"),
    }
}

/// The lowercased text columns, in table order.
pub const TEXT_FIELDS: [Field; 22] = [
    Field::Flow,
    Field::Type,
    Field::Action,
    Field::User,
    Field::Device,
    Field::Process,
    Field::SrcIp,
    Field::DstIp,
    Field::Host,
    Field::Url,
    Field::Method,
    Field::Category,
    Field::App,
    Field::Rule,
    Field::RuleId,
    Field::Revision,
    Field::Tls,
    Field::Bypass,
    Field::Severity,
    Field::Alert,
    Field::Reporter,
    Field::Gateway,
];

/// The integer columns, in table order.
pub const INTEGER_FIELDS: [Field; 4] = [
    Field::DstPort,
    Field::Status,
    Field::BytesIn,
    Field::BytesOut,
];

/// The name of a text or integer column (the others have fixed names).
pub fn column_name(field: Field) -> &'static str {
    match column(field) {
        Column::Text(name) | Column::Integer(name) => name,
        Column::Id => "id",
        Column::Groups => "group_members",
    }
}

/// PostgreSQL text cannot hold NUL: stored and compared values carry U+FFFD
/// in its place, on both sides, so a query still finds what it matched in memory.
pub fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// A text field's stored value: lowercased, NUL replaced.
pub fn stored_text(text: &str) -> String {
    let lower = fold(text);
    match pg_text(&lower) {
        Cow::Borrowed(_) => lower,
        Cow::Owned(o) => o,
    }
}

/// One event's column values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventColumns {
    pub text: [Option<String>; TEXT_FIELDS.len()],
    pub integer: [Option<i64>; INTEGER_FIELDS.len()],
    /// Members as `eq` compares them; empty without groups.
    pub group_members: Vec<String>,
    /// The joined groups as `like` sees them; `None` without groups.
    pub group_text: Option<String>,
    /// `group_members` joined by `,`: what the array insert passes (SQL
    /// splits it back); `None` without groups.
    pub group_joined: Option<String>,
}

impl EventColumns {
    /// The columns of `e`, from the very functions `Query::matches` reads.
    pub fn of(e: &Event) -> EventColumns {
        let text = TEXT_FIELDS.map(|f| f.text(e).map(|t| stored_text(&t)));
        let integer = INTEGER_FIELDS.map(|f| f.integer(e));
        debug_assert_eq!(Field::Group.kind(), FieldKind::Set);
        let joined = Field::Group.text(e);
        let group_joined = joined.as_deref().map(|j| pg_text(&fold(j)).into_owned());
        let group_members = group_joined
            .as_deref()
            .map(|j| j.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        EventColumns {
            text,
            integer,
            group_members,
            group_text: joined.as_deref().map(stored_text),
            group_joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_field_has_a_written_column() {
        for f in Field::ALL {
            let written = match column(f) {
                Column::Id | Column::Groups => true,
                Column::Text(_) => TEXT_FIELDS.contains(&f),
                Column::Integer(_) => INTEGER_FIELDS.contains(&f),
            };
            assert!(written, "{f:?} has a column that inserts never fill");
        }
    }
}
