//! Response rules: each stored event is matched against the `[[response]]` queries as
//! the event store commits it (a hook on the ingest path, [`StoredHook`]), and a match
//! isolates the event's device, recording the event id that triggered it.
//!
//! The hook runs on the store's writer thread, so it only copies the stored form of
//! each event into a bounded channel; a thread of its own decodes them,
//! evaluates the queries and acts. Matches are rare; decoding is the cost, and it is
//! skipped entirely while no rule is configured.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rampart_events::field::Field;
use rampart_events::pipeline::StoredHook;
use rampart_events::query::FieldValues;
use rampart_events::store::PreparedEvent;

use super::config::{ResponseRule, Scope};
use super::{IsolationService, Request, Wanted};

/// Stored events waiting for the matcher at most; beyond it they are counted and
/// skipped (logged), never allowed to slow the store down.
const QUEUE: usize = 16_384;
/// The window of `rate_limit`.
const WINDOW: Duration = Duration::from_secs(60);

/// Isolations per rule in the last minute.
#[derive(Default)]
pub struct RateLimiter {
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Whether `rule` may act once more now (and counts it if so).
    pub fn allow(&self, rule: &str, per_minute: u32, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let times = recent.entry(rule.to_string()).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Whether a device (with its groups) is inside a rule's scope.
pub fn in_scope(scope: &Scope, device: &str, groups: &[String]) -> bool {
    let devices_ok = scope.devices.is_empty() || scope.devices.iter().any(|d| d == device);
    let groups_ok =
        scope.groups.is_empty() || scope.groups.iter().any(|g| groups.iter().any(|x| x == g));
    devices_ok && groups_ok
}

/// What one rule decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Isolate,
    DryRun,
    RateLimited,
}

/// The rules that match `event` and are in scope, with what each decided. The first
/// matching rule that isolates ends the list: the device is isolated once.
pub fn decide(
    rules: &[ResponseRule],
    event: &dyn FieldValues,
    device: &str,
    groups: &[String],
    limiter: &RateLimiter,
    now: Instant,
) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for rule in rules {
        if !rule.query.matches(event) || !in_scope(&rule.scope, device, groups) {
            continue;
        }
        if rule.dry_run {
            out.push((rule.name.clone(), Decision::DryRun));
            continue;
        }
        if limiter.allow(&rule.name, rule.rate_limit, now) {
            out.push((rule.name.clone(), Decision::Isolate));
            break;
        }
        out.push((rule.name.clone(), Decision::RateLimited));
    }
    out
}

/// The hook installed on the event pipeline.
pub struct ResponseHook {
    service: Weak<IsolationService>,
    tx: SyncSender<Vec<u8>>,
    skipped: std::sync::atomic::AtomicU64,
}

impl ResponseHook {
    /// Starts the matcher thread; install the result with
    /// `Pipeline::set_stored_hook`.
    pub fn start(service: &Arc<IsolationService>) -> std::io::Result<Arc<ResponseHook>> {
        let (tx, rx) = sync_channel(QUEUE);
        let weak = Arc::downgrade(service);
        let for_thread = weak.clone();
        std::thread::Builder::new()
            .name("rampart-response".into())
            .spawn(move || matcher(rx, for_thread))?;
        Ok(Arc::new(ResponseHook {
            service: weak,
            tx,
            skipped: Default::default(),
        }))
    }
}

impl StoredHook for ResponseHook {
    fn stored(&self, events: &[PreparedEvent]) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        if service.compiled().rules.is_empty() {
            return;
        }
        for event in events {
            match self.tx.try_send(event.stored().to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let n = self
                        .skipped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n.is_multiple_of(1000) {
                        tracing::error!(
                            skipped = n + 1,
                            "response rules are behind; stored events skipped"
                        );
                    }
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn matcher(rx: Receiver<Vec<u8>>, service: Weak<IsolationService>) {
    while let Ok(stored) = rx.recv() {
        let Some(service) = service.upgrade() else {
            return;
        };
        let record = match rampart_events::store::decode_stored(&stored) {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!(%err, "response rules: undecodable stored event");
                continue;
            }
        };
        act(&service, &record);
    }
}

/// Matches one stored event and acts on it.
pub(crate) fn act(service: &IsolationService, event: &dyn FieldValues) {
    let compiled = service.compiled();
    let Some(device) = event.text(Field::Device).map(|d| d.into_owned()) else {
        return;
    };
    let id = event
        .text(Field::Id)
        .map(|d| d.into_owned())
        .unwrap_or_default();
    // The device's groups from the inventory (the certificate's), not the event's.
    let groups = match service.device(&device) {
        Ok(Some(record)) => record.groups,
        Ok(None) => return,
        Err(err) => {
            tracing::error!(%err, device, "response rules: cannot read the device inventory");
            return;
        }
    };
    for (rule, decision) in decide(
        &compiled.rules,
        event,
        &device,
        &groups,
        &service.limiter,
        Instant::now(),
    ) {
        match decision {
            Decision::DryRun => {
                tracing::info!(rule, device, event = %id, "response rule matched (dry run): would isolate");
                service.record_note(
                    &device,
                    format!("response rule {rule:?} (dry run) would isolate: event {id}"),
                    Some(&rule),
                );
            }
            Decision::RateLimited => {
                tracing::warn!(rule, device, event = %id, "response rule matched but its rate limit is reached; not isolating");
                service.record_note(
                    &device,
                    format!("response rule {rule:?} rate limited: did not isolate for event {id}"),
                    Some(&rule),
                );
            }
            Decision::Isolate => {
                let request = Request {
                    reason: Some(format!("response rule {rule:?} matched event {id}")),
                    by: format!("response:{rule}"),
                    trigger_event: Some(id.clone()),
                };
                match service.set(&device, Wanted::Isolated, request) {
                    Ok(change) if change.changed => {
                        tracing::warn!(rule, device, event = %id, "response rule isolated the device")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(%err, rule, device, "response rule could not isolate")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::config::{Compiled, IsolationConfig, ResponseAction, ResponseRuleConfig};
    use std::borrow::Cow;

    struct Ev(Vec<(Field, String)>);

    impl FieldValues for Ev {
        fn text(&self, field: Field) -> Option<Cow<'_, str>> {
            self.0
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| Cow::Borrowed(v.as_str()))
        }
        fn integer(&self, field: Field) -> Option<i64> {
            self.text(field).and_then(|v| v.parse().ok())
        }
    }

    fn rules(list: &[(&str, &str, bool, u32, Scope)]) -> Vec<ResponseRule> {
        let configs: Vec<ResponseRuleConfig> = list
            .iter()
            .map(
                |(name, query, dry_run, rate_limit, scope)| ResponseRuleConfig {
                    name: name.to_string(),
                    query: query.to_string(),
                    action: ResponseAction::Isolate,
                    scope: scope.clone(),
                    rate_limit: *rate_limit,
                    dry_run: *dry_run,
                },
            )
            .collect();
        Compiled::load(&IsolationConfig::default(), &configs)
            .unwrap()
            .rules
    }

    fn shell(device: &str) -> Ev {
        Ev(vec![
            (Field::Device, device.into()),
            (Field::DstPort, "4444".into()),
            (Field::Action, "block".into()),
        ])
    }

    #[test]
    fn a_matching_event_isolates_and_others_do_not() {
        let rules = rules(&[(
            "shell",
            "dst_port = 4444 and action = block",
            false,
            5,
            Scope::default(),
        )]);
        let limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(
            decide(&rules, &shell("dev-a"), "dev-a", &[], &limiter, now),
            vec![("shell".to_string(), Decision::Isolate)]
        );
        let web = Ev(vec![
            (Field::Device, "dev-a".into()),
            (Field::DstPort, "443".into()),
        ]);
        assert!(decide(&rules, &web, "dev-a", &[], &limiter, now).is_empty());
    }

    #[test]
    fn the_rate_limit_caps_isolations_per_rule_per_minute() {
        let rules = rules(&[("shell", "dst_port = 4444", false, 2, Scope::default())]);
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let d = |dev: &str, at: Instant| {
            decide(&rules, &shell(dev), dev, &[], &limiter, at)[0]
                .1
                .clone()
        };
        assert_eq!(d("a", t0), Decision::Isolate);
        assert_eq!(d("b", t0), Decision::Isolate);
        assert_eq!(d("c", t0 + Duration::from_secs(30)), Decision::RateLimited);
        assert_eq!(
            d("c", t0 + Duration::from_secs(61)),
            Decision::Isolate,
            "the window slides"
        );
    }

    #[test]
    fn scope_and_dry_run_are_honoured() {
        let scope = Scope {
            groups: vec!["laptops".into()],
            devices: vec![],
        };
        let rules = rules(&[
            ("watch", "dst_port = 4444", true, 5, Scope::default()),
            ("laptops only", "dst_port = 4444", false, 5, scope),
        ]);
        let limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(
            decide(
                &rules,
                &shell("srv"),
                "srv",
                &["servers".into()],
                &limiter,
                now
            ),
            vec![("watch".to_string(), Decision::DryRun)]
        );
        assert_eq!(
            decide(
                &rules,
                &shell("lap"),
                "lap",
                &["laptops".into()],
                &limiter,
                now
            ),
            vec![
                ("watch".to_string(), Decision::DryRun),
                ("laptops only".to_string(), Decision::Isolate)
            ]
        );
        assert!(in_scope(
            &Scope {
                groups: vec![],
                devices: vec!["x".into()]
            },
            "x",
            &[]
        ));
        assert!(!in_scope(
            &Scope {
                groups: vec![],
                devices: vec!["x".into()]
            },
            "y",
            &[]
        ));
    }
}
