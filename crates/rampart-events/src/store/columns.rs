//! The values of a stored event's query fields ("columns"), taken from a full
//! OCSF event or straight from a flow record without building one: what
//! postings are built from and queries are evaluated on.

use std::borrow::Cow;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use uuid::Uuid;

use crate::event::{Event, EventType};
use crate::field::{Field, FieldKind};
use crate::flow::{url_hostname, FlowEvent, FlowKind};
use crate::record::Record;

/// Something the writer stores: one event, with its id, time and field values.
pub trait Row {
    fn id(&self) -> Uuid;
    fn time(&self) -> i64;
    /// The value of `f`'s column, borrowed where the row holds it as text.
    fn column(&self, f: Field) -> ToSqlOutput<'_>;
}

impl Row for Event {
    fn id(&self) -> Uuid {
        Event::id(self)
    }
    fn time(&self) -> i64 {
        self.time
    }
    fn column(&self, f: Field) -> ToSqlOutput<'_> {
        event_column(f, self)
    }
}

impl Row for FlowEvent {
    fn id(&self) -> Uuid {
        self.id
    }
    fn time(&self) -> i64 {
        self.summary.end_ms
    }
    fn column(&self, f: Field) -> ToSqlOutput<'_> {
        flow_column(f, self)
    }
}

impl Row for Record {
    fn id(&self) -> Uuid {
        Record::id(self)
    }
    fn time(&self) -> i64 {
        Record::time(self)
    }
    fn column(&self, f: Field) -> ToSqlOutput<'_> {
        match self {
            Record::Event(e) => event_column(f, e),
            Record::Flow(flow) => flow_column(f, flow),
        }
    }
}

impl<R: Row> Row for Box<R> {
    fn id(&self) -> Uuid {
        (**self).id()
    }
    fn time(&self) -> i64 {
        (**self).time()
    }
    fn column(&self, f: Field) -> ToSqlOutput<'_> {
        (**self).column(f)
    }
}

/// Queries read a stored record through its columns: the same values the
/// OCSF event would give (the tests below hold them equal), without building it.
impl crate::query::FieldValues for Record {
    fn text(&self, field: Field) -> Option<Cow<'_, str>> {
        match self {
            Record::Event(e) => crate::query::FieldValues::text(&**e, field),
            Record::Flow(flow) => match flow_column(field, flow) {
                ToSqlOutput::Borrowed(ValueRef::Text(t)) => {
                    std::str::from_utf8(t).ok().map(Cow::Borrowed)
                }
                ToSqlOutput::Owned(Value::Text(t)) if field.kind() == FieldKind::Set => {
                    Some(Cow::Owned(t.trim_matches(',').to_string()))
                }
                ToSqlOutput::Owned(Value::Text(t)) => Some(Cow::Owned(t)),
                ToSqlOutput::Owned(Value::Integer(n)) => Some(Cow::Owned(n.to_string())),
                _ => None,
            },
        }
    }

    fn integer(&self, field: Field) -> Option<i64> {
        match self {
            Record::Event(e) => field.integer(e),
            Record::Flow(flow) => match flow_column(field, flow) {
                ToSqlOutput::Owned(Value::Integer(n)) => Some(n),
                _ => None,
            },
        }
    }
}

fn text(v: Option<&str>) -> ToSqlOutput<'_> {
    match v {
        Some(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        None => ToSqlOutput::Owned(Value::Null),
    }
}

fn owned_text(v: Option<String>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(v.map_or(Value::Null, Value::Text))
}

fn integer(v: Option<i64>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer))
}

/// The `groups` column: lowercase members between commas, so `eq` is a `LIKE '%,x,%'`.
fn group_set<'a>(groups: impl Iterator<Item = &'a str>) -> ToSqlOutput<'static> {
    let joined = groups.collect::<Vec<_>>().join(",");
    owned_text((!joined.is_empty()).then(|| format!(",{},", crate::query::fold(&joined))))
}

/// One column's value, borrowed from the event when it is stored there as text.
fn event_column(f: Field, e: &Event) -> ToSqlOutput<'_> {
    match f {
        Field::Type => text(e.event_type().map(|t| t.as_str())),
        Field::Action => text(e.verdict().map(|v| v.as_str())),
        Field::User => text(e.user_name()),
        Field::Group => group_set(e.groups()),
        Field::Device => text(e.device_name()),
        Field::Process => text(e.process_name()),
        Field::SrcIp => text(e.src_endpoint.as_ref().and_then(|s| s.ip.as_deref())),
        Field::DstIp => text(e.dst_endpoint.as_ref().and_then(|s| s.ip.as_deref())),
        Field::Host => text(e.host()),
        Field::Url => text(e.url()),
        Field::Method => text(
            e.http_request
                .as_ref()
                .and_then(|r| r.http_method.as_deref()),
        ),
        Field::Category => text(e.unmapped.category.as_deref()),
        Field::App => text(e.unmapped.app.as_deref()),
        Field::Rule => text(e.policy.as_ref().and_then(|p| p.name.as_deref())),
        Field::RuleId => text(e.policy.as_ref().and_then(|p| p.uid.as_deref())),
        Field::Revision => text(e.policy.as_ref().and_then(|p| p.version.as_deref())),
        Field::Tls => text(e.unmapped.tls_decision.map(|t| t.as_str())),
        Field::Bypass => text(e.unmapped.bypass.as_ref().map(|b| b.at.as_str())),
        Field::Gateway => text(e.unmapped.gateway.as_deref()),
        Field::Reporter => text(e.metadata.log_provider.as_deref()),
        _ => match f.kind() {
            FieldKind::Integer => integer(f.integer(e)),
            _ => owned_text(f.text(e)),
        },
    }
}

/// One column's value for a flow event, equal to [`event_column`] of the
/// event [`FlowEvent::event`] builds (the test below holds them together).
fn flow_column(f: Field, flow: &FlowEvent) -> ToSqlOutput<'_> {
    let s = &flow.summary;
    let http = flow.kind == FlowKind::Http;
    match f {
        Field::Type => text(Some(
            if http {
                EventType::Http
            } else {
                EventType::Network
            }
            .as_str(),
        )),
        Field::Flow => owned_text(Some(s.flow_id.to_string())),
        Field::Action => text(Some(s.verdict.as_str())),
        Field::User => text(s.user.as_deref()),
        // Groups belong to the user: no user, no groups.
        Field::Group => match &s.user {
            Some(_) => group_set(s.groups.iter().map(String::as_str)),
            None => owned_text(None),
        },
        Field::Device => text(s.device_uid.as_deref().or(s.device_hostname.as_deref())),
        Field::Process => text(s.process_name.as_deref()),
        Field::SrcIp => owned_text(s.src.map(|a| a.ip().to_string())),
        Field::DstIp => owned_text(s.dst.map(|a| a.ip().to_string())),
        Field::DstPort => integer(s.dst.map(|a| i64::from(a.port()))),
        Field::Host => {
            let from_url = if http {
                s.url.as_deref().and_then(url_hostname)
            } else {
                None
            };
            match from_url {
                Some(h) => owned_text(Some(h)),
                None => text(s.sni.as_deref().or(s.host.as_deref())),
            }
        }
        Field::Url => text(if http { s.url.as_deref() } else { None }),
        Field::Method => text(http.then(|| s.method.as_deref().unwrap_or("GET"))),
        Field::Status => integer(if http { s.status.map(i64::from) } else { None }),
        Field::Category => text(s.categories.first().map(String::as_str)),
        Field::App => text(s.app.as_deref()),
        Field::Rule => text(s.rule_name.as_deref()),
        Field::RuleId => text(s.rule_id.as_deref()),
        Field::Revision => text(s.policy_revision.as_deref()),
        Field::Tls => text(s.tls_decision.map(|t| t.as_str())),
        Field::Bypass => text(s.bypass.as_ref().map(|b| b.at.as_str())),
        Field::BytesIn => integer(Some(s.bytes_in as i64)),
        Field::BytesOut => integer(Some(s.bytes_out as i64)),
        // Flow events are informational (`Event::new`'s severity), lowercase like the column.
        Field::Severity => text(Some("informational")),
        Field::Reporter => text(Some(&s.reporter)),
        // A flow record is what the local data path made: the fleet gateway is
        // stamped on the OCSF event by the server that takes it from the stream.
        Field::Gateway => owned_text(None),
        Field::Id => owned_text(Some(flow.id.to_string())),
        // Flow events are never findings.
        Field::Alert => owned_text(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Bypass, BypassSite, TlsDecision, Verdict};
    use crate::flow::FlowSummary;

    fn value(v: ToSqlOutput<'_>) -> Value {
        match v {
            ToSqlOutput::Borrowed(ValueRef::Text(t)) => {
                Value::Text(String::from_utf8(t.to_vec()).unwrap())
            }
            ToSqlOutput::Borrowed(ValueRef::Integer(n)) => Value::Integer(n),
            ToSqlOutput::Borrowed(ValueRef::Null) => Value::Null,
            ToSqlOutput::Owned(v) => v,
            _ => unreachable!(),
        }
    }

    /// What the query language sees: `Field::text`/`integer` of the event.
    fn expected(f: Field, e: &Event) -> Value {
        match f.kind() {
            FieldKind::Integer => f.integer(e).map_or(Value::Null, Value::Integer),
            FieldKind::Set => f.text(e).map_or(Value::Null, |g| {
                Value::Text(format!(",{},", crate::query::fold(&g)))
            }),
            FieldKind::Text => f.text(e).map_or(Value::Null, Value::Text),
        }
    }

    fn summaries() -> Vec<FlowSummary> {
        let bare = FlowSummary::new(crate::event::new_flow_id(), 1_763_900_000_000);
        let mut full = bare.clone();
        full.end_ms = full.start_ms + 250;
        full.user = Some("Alice".into());
        full.groups = vec!["Eng".into(), "ops".into()];
        full.device_uid = Some("laptop-1".into());
        full.process_name = Some("curl".into());
        full.process_pid = Some(42);
        full.host = Some("a.example".into());
        full.sni = Some("sni.example".into());
        full.url = Some("https://User@A.Example:8443/x?y".into());
        full.method = Some("POST".into());
        full.status = Some(403);
        full.categories = vec!["news".into(), "media".into()];
        full.app = Some("Wiki".into());
        full.rule_id = Some("r7".into());
        full.rule_name = Some("block news".into());
        full.policy_revision = Some("12".into());
        full.verdict = Verdict::Block;
        full.tls_decision = Some(TlsDecision::Decrypt);
        full.bypass = Some(Bypass {
            at: BypassSite::Gateway,
            reason: "x".into(),
        });
        full.src = Some("10.0.0.1:5000".parse().unwrap());
        full.dst = Some("[2001:db8::1]:443".parse().unwrap());
        full.bytes_in = 5120;
        full.bytes_out = 77;
        full.reporter = "agent".into();
        let mut groups_without_user = bare.clone();
        groups_without_user.groups = vec!["eng".into()];
        groups_without_user.device_hostname = Some("host-9".into());
        let mut sni_only = bare.clone();
        sni_only.sni = Some("only-sni.example".into());
        sni_only.url = Some("not a url".into());
        let mut host_only = bare.clone();
        host_only.host = Some("h.example".into());
        host_only.url = Some("http:///no-host".into());
        vec![bare, full, groups_without_user, sni_only, host_only]
    }

    /// Every column of a flow record equals what the event it builds would store.
    #[test]
    fn flow_columns_match_the_built_event() {
        for s in summaries() {
            for kind in [FlowKind::Http, FlowKind::Network] {
                let flow = FlowEvent::new(kind, s.clone());
                let e = flow.event();
                assert_eq!(Row::id(&flow_record(&flow)), e.id());
                assert_eq!(Row::time(&flow_record(&flow)), e.time);
                for f in Field::ALL {
                    assert_eq!(
                        value(flow_column(f, &flow)),
                        expected(f, &e),
                        "{f:?} of {kind:?} {s:?}"
                    );
                }
            }
        }
    }

    fn flow_record(flow: &FlowEvent) -> Record {
        Record::Flow(flow.clone())
    }

    /// The borrowed fast path binds exactly what `Field::text`/`integer` say.
    #[test]
    fn event_columns_match_the_query_fields() {
        for s in summaries() {
            for e in [s.http_event(), s.network_event()] {
                for f in Field::ALL {
                    if matches!(f, Field::Id | Field::Alert) {
                        continue;
                    }
                    assert_eq!(value(event_column(f, &e)), expected(f, &e), "{f:?}");
                }
            }
        }
    }
}
