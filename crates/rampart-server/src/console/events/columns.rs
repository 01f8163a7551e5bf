//! The columns of the console's event tables and of the CSV export: the user
//! chooses them with `cols=` in the URL (comma-separated, or repeated as the
//! column form's checkboxes send it), so a search with its columns can be
//! bookmarked and shared, and paging keeps them.

use rampart_events::field::{Field, FieldKind};
use rampart_events::render::{table_time, time_text};
use rampart_events::{Event, EventType};

/// One column: the event time, a query field, or one of two columns made for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Time,
    Field(Field),
    /// The URL, else the host, else the message; an audit event's message (what
    /// was done in the console, by whom, why).
    Target,
    /// The event's message.
    Message,
}

/// The events page's columns unless the user chose others.
pub const EVENTS_DEFAULT: [Column; 7] = [
    Column::Time,
    Column::Field(Field::Type),
    Column::Field(Field::Action),
    Column::Field(Field::User),
    Column::Field(Field::Device),
    Column::Target,
    Column::Field(Field::Rule),
];

/// The alerts page's columns unless the user chose others.
pub const ALERTS_DEFAULT: [Column; 8] = [
    Column::Time,
    Column::Field(Field::Type),
    Column::Field(Field::Action),
    Column::Field(Field::User),
    Column::Field(Field::Device),
    Column::Target,
    Column::Field(Field::Rule),
    Column::Field(Field::Severity),
];

impl Column {
    /// Every column, in the order the column form offers them.
    pub fn all() -> impl Iterator<Item = Column> {
        std::iter::once(Column::Time)
            .chain(Field::ALL.into_iter().map(Column::Field))
            .chain([Column::Target, Column::Message])
    }

    /// The name in `cols=` and the CSV header.
    pub fn name(self) -> &'static str {
        match self {
            Column::Time => "time",
            Column::Field(f) => f.name(),
            Column::Target => "target",
            Column::Message => "message",
        }
    }

    /// The table header.
    pub fn label(self) -> &'static str {
        match self {
            Column::Time => "Time (UTC)",
            Column::Target => "Host / URL",
            Column::Message => "Message",
            Column::Field(f) => match f {
                Field::Id => "Event id",
                Field::Flow => "Flow",
                Field::Type => "Type",
                Field::Action => "Action",
                Field::User => "User",
                Field::Group => "Groups",
                Field::Device => "Device",
                Field::Process => "Process",
                Field::SrcIp => "Source IP",
                Field::DstIp => "Destination IP",
                Field::DstPort => "Port",
                Field::Host => "Host",
                Field::Url => "URL",
                Field::Method => "Method",
                Field::Status => "Status",
                Field::Category => "Category",
                Field::App => "App",
                Field::Rule => "Rule",
                Field::RuleId => "Rule id",
                Field::Revision => "Policy revision",
                Field::Tls => "TLS",
                Field::Bypass => "Bypass",
                Field::BytesIn => "Bytes in",
                Field::BytesOut => "Bytes out",
                Field::Severity => "Severity",
                Field::Alert => "Alert id",
                Field::Gateway => "Gateway",
                Field::Reporter => "Reporter",
            },
        }
    }

    /// A column by its name, or a field by any name the query language accepts
    /// (`verdict` is `action`).
    pub fn parse(name: &str) -> Option<Column> {
        match name.to_ascii_lowercase().as_str() {
            "time" => Some(Column::Time),
            "target" => Some(Column::Target),
            "message" => Some(Column::Message),
            other => Field::parse(other).map(Column::Field),
        }
    }

    /// The cell's text in the console's tables.
    pub fn text(self, e: &Event) -> Option<String> {
        match self {
            Column::Time => Some(table_time(e.time)),
            Column::Field(f) => f.text(e),
            Column::Target => Some(target(e)).filter(|t| !t.is_empty()),
            Column::Message => e.message.clone(),
        }
    }

    /// The CSV field: the time in RFC 3339, the rest as in the table (and as the
    /// flat JSON output), empty when the event has no value.
    pub fn csv_text(self, e: &Event) -> String {
        match self {
            Column::Time => time_text(e.time),
            other => other.text(e).unwrap_or_default(),
        }
    }

    /// The cell's class: numbers align right, long values wrap, the action is
    /// coloured on blocked rows.
    pub fn class(self) -> Option<&'static str> {
        match self {
            Column::Field(Field::Action) => Some("action"),
            Column::Field(f) if f.kind() == FieldKind::Integer => Some("num"),
            Column::Field(Field::Url) | Column::Target | Column::Message => Some("wrap"),
            _ => None,
        }
    }

    /// The field a cell's value links to a search of, for values one pivots on
    /// (who, which device, where to); not for ids, sizes, URLs or the low-cardinality
    /// type, action and severity.
    pub fn pivot(self) -> Option<Field> {
        match self {
            Column::Field(
                f @ (Field::User
                | Field::Device
                | Field::Process
                | Field::SrcIp
                | Field::DstIp
                | Field::DstPort
                | Field::Host
                | Field::Category
                | Field::App
                | Field::Rule
                | Field::RuleId
                | Field::Revision
                | Field::Flow
                | Field::Alert),
            ) => Some(f),
            _ => None,
        }
    }
}

/// The URL, else the host, else the message; for an audit event, its message.
fn target(e: &Event) -> String {
    if e.event_type() == Some(EventType::Audit) {
        return e.message.clone().unwrap_or_default();
    }
    e.url()
        .or_else(|| e.host())
        .map(str::to_string)
        .or_else(|| e.message.clone())
        .unwrap_or_default()
}

/// Every column of the CSV export when the request names none: the time and
/// every field of the flat JSON output.
pub fn every_flat_field() -> Vec<Column> {
    std::iter::once(Column::Time)
        .chain(
            Field::ALL
                .into_iter()
                .filter(|f| *f != Field::Reporter)
                .map(Column::Field),
        )
        .collect()
}

/// A `cols=` value naming no column.
#[derive(Debug, thiserror::Error)]
#[error("unknown column {name:?} in cols={hint}; the columns are {}", known())]
pub struct UnknownColumn {
    name: String,
    hint: String,
}

impl UnknownColumn {
    fn new(name: &str) -> UnknownColumn {
        let lower = name.to_ascii_lowercase();
        let close: Vec<&str> = match Field::suggest(&lower) {
            Some(one) => vec![one],
            None if lower.len() >= 3 => Column::all()
                .map(Column::name)
                .filter(|n| n.starts_with(&lower))
                .collect(),
            None => Vec::new(),
        };
        let hint = match close.as_slice() {
            [] => String::new(),
            names => format!(" (did you mean {}?)", names.join(" or ")),
        };
        UnknownColumn {
            name: name.to_string(),
            hint,
        }
    }
}

fn known() -> String {
    Column::all()
        .map(Column::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns `cols=` values name, in order, each once: each value is one name
/// or several separated by commas. `None` when they name none (the page's default).
pub fn parse_list<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Vec<Column>>, UnknownColumn> {
    let mut cols: Vec<Column> = Vec::new();
    for name in values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let col = Column::parse(name).ok_or_else(|| UnknownColumn::new(name))?;
        if !cols.contains(&col) {
            cols.push(col);
        }
    }
    Ok((!cols.is_empty()).then_some(cols))
}

/// The `cols=` value for `cols`: names separated by commas.
pub fn list_param(cols: &[Column]) -> String {
    cols.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_parses_back_from_its_name() {
        for c in Column::all() {
            assert_eq!(Column::parse(c.name()), Some(c));
        }
        assert_eq!(Column::all().count(), Field::ALL.len() + 3);
    }

    #[test]
    fn lists_keep_their_order_drop_repeats_and_read_aliases() {
        let cols = parse_list(["time,verdict", "host", " bytes_out ,HOST", ""])
            .expect("known columns")
            .expect("some columns");
        assert_eq!(list_param(&cols), "time,action,host,bytes_out");
        assert_eq!(parse_list(["", " , "]).expect("empty"), None);
    }

    #[test]
    fn an_unknown_column_names_itself_and_close_ones() {
        let e = parse_list(["time,bytes"]).expect_err("bytes is no column");
        let text = e.to_string();
        assert!(
            text.starts_with("unknown column \"bytes\" in cols= (did you mean bytes_in or bytes_out?); the columns are time, id,"),
            "{text}"
        );
        let e = parse_list(["catgory"]).expect_err("misspelt");
        assert!(e.to_string().contains("did you mean category?"), "{e}");
    }
}
