//! TOML → [`Document`], reporting every problem with its location. Walks the span-
//! preserving `toml::de::DeTable` by hand (rather than serde) so that all errors of a
//! file are reported at once, each with its place and a "did you mean".

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::action::{AccessAction, DecryptionAction, Stage, SteeringAction};
use crate::diagnostic::{suggest, Diagnostic, Location, SourceMap};
use crate::domain::Pattern;
use crate::facts::{Direction, VERDICTS};
use crate::model::*;

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &[
    "identities",
    "lists",
    "categories",
    "apps",
    "upstreams",
    "defaults",
    "steering",
    "decryption",
    "access",
    "egress",
];
const CONDITION_KEYS: &[&str] = &[
    "users",
    "groups",
    "devices",
    "networks",
    "processes",
    "categories",
    "apps",
    "lists",
    "hosts",
    "ports",
    "methods",
    "file_types",
    "verdicts",
    "dlp",
    "direction",
    "size",
];
const RULE_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "disabled",
    "when",
    "unless",
    "action",
    "log",
    "via",
    "source",
];

/// Parses one policy file. `base_dir` resolves relative category paths.
pub(crate) fn parse_document(
    map: &SourceMap,
    src: &str,
    base_dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<Document> {
    let (root, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        for e in errors {
            let loc = map.locate(e.span().map(|s| s.start).unwrap_or(0));
            diags.push(Diagnostic::error(
                &loc,
                format!("TOML syntax: {}", e.message().trim()),
            ));
        }
        return None;
    }
    let mut p = Parser {
        map,
        diags,
        base_dir,
    };
    let mut doc = Document::default();
    let root = root.get_ref();
    p.check_keys(root, TOP_KEYS, "top level");
    if let Some(v) = root.get("identities") {
        p.identities(v, &mut doc);
    }
    if let Some(v) = root.get("lists") {
        p.lists(v, &mut doc);
    }
    if let Some(v) = root.get("categories") {
        p.categories(v, &mut doc);
    }
    if let Some(v) = root.get("apps") {
        p.apps(v, &mut doc);
    }
    if let Some(v) = root.get("upstreams") {
        p.upstreams(v, &mut doc);
    }
    if let Some(v) = root.get("defaults") {
        p.defaults(v, &mut doc);
    }
    for stage in Stage::ALL {
        if let Some(v) = root.get(stage.as_str()) {
            p.rules(stage, v, &mut doc);
        }
    }
    Some(doc)
}

struct Parser<'a> {
    map: &'a SourceMap,
    diags: &'a mut Vec<Diagnostic>,
    base_dir: &'a Path,
}

impl Parser<'_> {
    fn loc(&self, span: &Range<usize>) -> Location {
        self.map.locate_span(span)
    }

    fn error(&mut self, span: &Range<usize>, msg: impl Into<String>) {
        let loc = self.loc(span);
        self.diags.push(Diagnostic::error(&loc, msg));
    }

    fn check_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], context: &str) {
        for key in table.keys() {
            let k: &str = key.get_ref();
            if !allowed.contains(&k) {
                let loc = self.loc(&key.span());
                let hint = if context.starts_with("rule") && CONDITION_KEYS.contains(&k) {
                    format!(" (conditions go inside `when = {{ {k} = [...] }}`)")
                } else {
                    String::new()
                };
                self.diags.push(
                    Diagnostic::error(&loc, format!("unknown key \"{k}\" in {context}{hint}"))
                        .with_suggestion(suggest(k, allowed.iter().copied())),
                );
            }
        }
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, what: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &v.span(),
                    format!("{what} must be a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn array<'v, 'i>(&mut self, v: &'v Value<'i>, what: &str) -> Option<&'v [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            other => {
                self.error(
                    &v.span(),
                    format!("{what} must be an array, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Value<'_>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    &v.span(),
                    format!("{what} must be a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, what: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    &v.span(),
                    format!("{what} must be true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string or an array of strings, each with its location. Empty arrays are an
    /// error: an empty condition would silently match nothing.
    fn strings(&mut self, v: &Value<'_>, what: &str) -> Vec<Ref> {
        let items: Vec<&Value<'_>> = match v.get_ref() {
            DeValue::String(_) => vec![v],
            DeValue::Array(a) => {
                if a.is_empty() {
                    self.error(
                        &v.span(),
                        format!("{what} is empty; remove it to match anything"),
                    );
                }
                a.iter().collect()
            }
            other => {
                self.error(
                    &v.span(),
                    format!(
                        "{what} must be a string or an array of strings, found {}",
                        other.type_str()
                    ),
                );
                return Vec::new();
            }
        };
        items
            .into_iter()
            .filter_map(|item| {
                let name = self.string(item, &format!("each entry of {what}"))?;
                if name.trim().is_empty() {
                    self.error(&item.span(), format!("empty name in {what}"));
                    return None;
                }
                Some(Ref {
                    name,
                    loc: self.loc(&item.span()),
                })
            })
            .collect()
    }

    fn patterns(&mut self, v: &Value<'_>, what: &str) -> Vec<PatternDef> {
        let refs = self.strings(v, what);
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            match Pattern::parse(&r.name) {
                Ok(pattern) => out.push(PatternDef { pattern }),
                Err(msg) => self.diags.push(Diagnostic::error(
                    &r.loc,
                    format!("invalid entry in {what}: {msg}"),
                )),
            }
        }
        out
    }

    fn identities(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[identities]") else {
            return;
        };
        self.check_keys(t, &["users", "devices", "networks"], "[identities]");
        if let Some(users) = t.get("users") {
            doc.users = self.members(users, "identities.users", "user");
        }
        if let Some(devices) = t.get("devices") {
            doc.devices = self.members(devices, "identities.devices", "device");
        }
        if let Some(nets) = t.get("networks") {
            let Some(items) = self.array(nets, "identities.networks") else {
                return;
            };
            for item in items {
                let Some(nt) = self.table(item, "each network") else {
                    continue;
                };
                self.check_keys(nt, &["name", "cidrs"], "a network");
                let name = self.required_string(nt, "name", item, "a network");
                let mut cidrs = Vec::new();
                match nt.get("cidrs") {
                    Some(c) => {
                        for r in self.strings(c, "cidrs") {
                            match parse_cidr(&r.name) {
                                Some(net) => cidrs.push(net),
                                None => self.diags.push(Diagnostic::error(
                                    &r.loc,
                                    format!("\"{}\" is not an address block (expected e.g. \"203.0.113.0/24\")", r.name),
                                )),
                            }
                        }
                    }
                    None => self.error(&item.span(), "a network needs `cidrs = [...]`"),
                }
                if let Some(name) = name {
                    doc.networks.push(NetworkDef {
                        name,
                        cidrs,
                        loc: self.loc(&item.span()),
                    });
                }
            }
        }
    }

    fn required_string(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        at: &Value<'_>,
        what: &str,
    ) -> Option<String> {
        match t.get(key) {
            Some(v) => self.string(v, key),
            None => {
                self.error(&at.span(), format!("{what} needs `{key} = \"...\"`"));
                None
            }
        }
    }

    fn members(&mut self, v: &Value<'_>, what: &str, kind: &str) -> Vec<MemberDef> {
        let mut out = Vec::new();
        let Some(items) = self.array(v, what) else {
            return out;
        };
        for item in items {
            let Some(t) = self.table(item, &format!("each {kind}")) else {
                continue;
            };
            self.check_keys(t, &["name", "groups"], &format!("a {kind}"));
            let name = self.required_string(t, "name", item, &format!("a {kind}"));
            let groups = t
                .get("groups")
                .map(|g| self.strings(g, "groups"))
                .unwrap_or_default();
            if let Some(name) = name {
                out.push(MemberDef {
                    name,
                    groups,
                    loc: self.loc(&item.span()),
                });
            }
        }
        out
    }

    fn lists(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[lists]") else {
            return;
        };
        for (key, value) in t.iter() {
            let name = key.get_ref().to_string();
            let entries = self.patterns(value, &format!("list \"{name}\""));
            doc.lists.push(ListDef {
                name,
                entries,
                loc: self.loc(&key.span()),
            });
        }
    }

    fn categories(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[categories]") else {
            return;
        };
        self.check_keys(t, &["load", "custom"], "[categories]");
        if let Some(load) = t.get("load") {
            let items: Vec<&Value<'_>> = match load.get_ref() {
                DeValue::Array(a) => a.iter().collect(),
                _ => vec![load],
            };
            for item in items {
                let loc = self.loc(&item.span());
                match item.get_ref() {
                    DeValue::String(s) => doc.category_loads.push(CategoryLoad {
                        path: self.base_dir.join(s.as_ref()),
                        name: None,
                        written: s.to_string(),
                        loc,
                    }),
                    DeValue::Table(lt) => {
                        self.check_keys(lt, &["path", "name"], "a category source");
                        let path = self.required_string(lt, "path", item, "a category source");
                        let name = lt.get("name").and_then(|n| self.string(n, "name"));
                        if let Some(path) = path {
                            doc.category_loads.push(CategoryLoad {
                                path: self.base_dir.join(&path),
                                name,
                                written: path,
                                loc,
                            });
                        }
                    }
                    other => self.error(
                        &item.span(),
                        format!("categories.load entries must be paths or {{ path, name }} tables, found {}", other.type_str()),
                    ),
                }
            }
        }
        if let Some(custom) = t.get("custom") {
            let Some(ct) = self.table(custom, "[categories.custom]") else {
                return;
            };
            for (key, value) in ct.iter() {
                let name = key.get_ref().to_string();
                let Some(def) = self.table(value, &format!("custom category \"{name}\"")) else {
                    continue;
                };
                self.check_keys(def, &["categories", "lists"], "a custom category");
                let categories = def
                    .get("categories")
                    .map(|c| self.strings(c, "categories"))
                    .unwrap_or_default();
                let lists = def
                    .get("lists")
                    .map(|c| self.strings(c, "lists"))
                    .unwrap_or_default();
                if categories.is_empty() && lists.is_empty() {
                    self.error(
                        &value.span(),
                        format!("custom category \"{name}\" needs `categories` or `lists`"),
                    );
                }
                doc.custom_categories.push(CustomCategoryDef {
                    name,
                    categories,
                    lists,
                    loc: self.loc(&key.span()),
                });
            }
        }
    }

    fn apps(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[apps]") else {
            return;
        };
        for (key, value) in t.iter() {
            let id = key.get_ref().to_string();
            let Some(at) = self.table(value, &format!("app \"{id}\"")) else {
                continue;
            };
            self.check_keys(
                at,
                &["name", "category", "domains", "pins_certificates"],
                "an app",
            );
            let name = at.get("name").and_then(|n| self.string(n, "name"));
            let category = at.get("category").and_then(|n| self.string(n, "category"));
            let domains = at
                .get("domains")
                .map(|d| self.patterns(d, &format!("app \"{id}\" domains")))
                .unwrap_or_default();
            let pins_certificates = at
                .get("pins_certificates")
                .and_then(|b| self.boolean(b, "pins_certificates"));
            doc.apps.push(AppDef {
                id,
                name,
                category,
                domains,
                pins_certificates,
                loc: self.loc(&key.span()),
            });
        }
    }

    fn upstreams(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[upstreams]") else {
            return;
        };
        for (key, value) in t.iter() {
            let name = key.get_ref().to_string();
            let Some(ut) = self.table(value, &format!("upstream \"{name}\"")) else {
                continue;
            };
            self.check_keys(ut, &["proxies"], "an upstream group");
            let mut proxies = Vec::new();
            match ut.get("proxies") {
                Some(p) => {
                    for r in self.strings(p, "proxies") {
                        match check_proxy_url(&r.name) {
                            Ok(()) => proxies.push((r.name, r.loc)),
                            Err(msg) => self.diags.push(Diagnostic::error(&r.loc, msg)),
                        }
                    }
                }
                None => self.error(
                    &value.span(),
                    format!("upstream \"{name}\" needs `proxies = [\"http://host:port\"]`"),
                ),
            }
            doc.upstreams.push(UpstreamDef {
                name,
                proxies,
                loc: self.loc(&key.span()),
            });
        }
    }

    fn defaults(&mut self, v: &Value<'_>, doc: &mut Document) {
        let Some(t) = self.table(v, "[defaults]") else {
            return;
        };
        self.check_keys(
            t,
            &[
                "steering",
                "decryption",
                "access",
                "egress",
                "pinned_apps",
                "steering_log",
            ],
            "[defaults]",
        );
        if let Some(s) = t.get("steering") {
            doc.defaults.steering = self.enum_value(
                s,
                "steering default",
                SteeringAction::NAMES,
                SteeringAction::parse,
            );
        }
        if let Some(s) = t.get("decryption") {
            doc.defaults.decryption = self.enum_value(
                s,
                "decryption default",
                DecryptionAction::NAMES,
                DecryptionAction::parse,
            );
        }
        if let Some(s) = t.get("pinned_apps") {
            doc.defaults.pinned_apps = self.enum_value(
                s,
                "pinned_apps",
                DecryptionAction::NAMES,
                DecryptionAction::parse,
            );
        }
        if let Some(s) = t.get("access") {
            doc.defaults.access = self.enum_value(
                s,
                "access default",
                AccessAction::NAMES,
                AccessAction::parse,
            );
        }
        if let Some(s) = t.get("steering_log") {
            doc.defaults.steering_log = self.boolean(s, "steering_log");
        }
        if let Some(s) = t.get("egress") {
            let Some(text) = self.string(s, "egress default") else {
                return;
            };
            let loc = self.loc(&s.span());
            doc.defaults.egress = if text == "direct" {
                Some(EgressDef::Direct)
            } else if let Some(name) = text.strip_prefix("via:") {
                Some(EgressDef::Via(Ref {
                    name: name.trim().to_string(),
                    loc,
                }))
            } else if let Some(addr) = text.strip_prefix("source:") {
                match addr.trim().parse::<IpAddr>() {
                    Ok(ip) => Some(EgressDef::Source(ip)),
                    Err(_) => {
                        self.error(
                            &s.span(),
                            format!("\"{}\" is not an IP address", addr.trim()),
                        );
                        None
                    }
                }
            } else {
                self.error(
                    &s.span(),
                    format!("egress default \"{text}\" must be \"direct\", \"via:<upstream>\" or \"source:<address>\""),
                );
                None
            };
        }
    }

    fn enum_value<T>(
        &mut self,
        v: &Value<'_>,
        what: &str,
        names: &[&str],
        parse: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.string(v, what)?;
        match parse(&s) {
            Some(a) => Some(a),
            None => {
                let loc = self.loc(&v.span());
                self.diags.push(
                    Diagnostic::error(
                        &loc,
                        format!(
                            "unknown {what} \"{s}\" (expected one of: {})",
                            names.join(", ")
                        ),
                    )
                    .with_suggestion(suggest(&s, names.iter().copied())),
                );
                None
            }
        }
    }

    fn rules(&mut self, stage: Stage, v: &Value<'_>, doc: &mut Document) {
        let what = format!("[[{stage}]]");
        let Some(items) = self.array(v, &what) else {
            return;
        };
        for item in items {
            let Some(t) = self.table(item, &format!("each {what} rule")) else {
                continue;
            };
            if let Some(rule) = self.rule(stage, t, item) {
                doc.rules.push(rule);
            }
        }
    }

    fn rule(&mut self, stage: Stage, t: &DeTable<'_>, at: &Value<'_>) -> Option<RuleDef> {
        self.check_keys(t, RULE_KEYS, &format!("rule of [[{stage}]]"));
        let loc = self.loc(&at.span());
        let id = t.get("id").and_then(|v| self.string(v, "id"));
        let name = t.get("name").and_then(|v| self.string(v, "name"));
        let description = t
            .get("description")
            .and_then(|v| self.string(v, "description"));
        let disabled = t
            .get("disabled")
            .and_then(|v| self.boolean(v, "disabled"))
            .unwrap_or(false);
        let log = t
            .get("log")
            .and_then(|v| self.boolean(v, "log"))
            .unwrap_or(true);
        let when = match t.get("when") {
            Some(w) => self.conditions(w, "when")?,
            None => ConditionsDef::default(),
        };
        let unless = match t.get("unless") {
            Some(u) => Some(self.conditions(u, "unless")?),
            None => None,
        };
        let action = self.rule_action(stage, t, at);
        if stage != Stage::Steering && t.get("log").is_some() {
            self.error(
                &at.span(),
                format!("`log` applies to steering rules only, not [[{stage}]]"),
            );
        }
        Some(RuleDef {
            stage,
            id,
            name,
            description,
            disabled,
            when,
            unless,
            action,
            log,
            loc,
        })
    }

    fn rule_action(&mut self, stage: Stage, t: &DeTable<'_>, at: &Value<'_>) -> Option<ActionDef> {
        if stage == Stage::Egress {
            let via = t.get("via");
            let source = t.get("source");
            let action = t.get("action");
            let given = [via.is_some(), source.is_some(), action.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if given != 1 {
                self.error(
                    &at.span(),
                    "an egress rule needs exactly one of `via = \"<upstream>\"`, `source = \"<address>\"` or `action = \"direct\"`",
                );
                return None;
            }
            if let Some(v) = via {
                let name = self.string(v, "via")?;
                return Some(ActionDef::Egress(EgressDef::Via(Ref {
                    name,
                    loc: self.loc(&v.span()),
                })));
            }
            if let Some(v) = source {
                let s = self.string(v, "source")?;
                return match s.parse::<IpAddr>() {
                    Ok(ip) => Some(ActionDef::Egress(EgressDef::Source(ip))),
                    Err(_) => {
                        self.error(&v.span(), format!("source \"{s}\" is not an IP address"));
                        None
                    }
                };
            }
            let v = action?;
            let s = self.string(v, "action")?;
            if s != "direct" {
                let loc = self.loc(&v.span());
                self.diags.push(
                    Diagnostic::error(&loc, format!("unknown egress action \"{s}\" (use `action = \"direct\"`, `via` or `source`)"))
                        .with_suggestion(suggest(&s, ["direct"])),
                );
                return None;
            }
            return Some(ActionDef::Egress(EgressDef::Direct));
        }
        for key in ["via", "source"] {
            if let Some(v) = t.get(key) {
                self.error(
                    &v.span(),
                    format!("`{key}` belongs to [[egress]] rules, not [[{stage}]]"),
                );
            }
        }
        let Some(v) = t.get("action") else {
            self.error(
                &at.span(),
                format!("a [[{stage}]] rule needs `action = \"...\"`"),
            );
            return None;
        };
        Some(match stage {
            Stage::Steering => ActionDef::Steering(self.enum_value(
                v,
                "steering action",
                SteeringAction::NAMES,
                SteeringAction::parse,
            )?),
            Stage::Decryption => ActionDef::Decryption(self.enum_value(
                v,
                "decryption action",
                DecryptionAction::NAMES,
                DecryptionAction::parse,
            )?),
            Stage::Access => ActionDef::Access(self.enum_value(
                v,
                "access action",
                AccessAction::NAMES,
                AccessAction::parse,
            )?),
            Stage::Egress => unreachable!("handled above"),
        })
    }

    fn conditions(&mut self, v: &Value<'_>, what: &str) -> Option<ConditionsDef> {
        let t = self.table(v, &format!("`{what}`"))?;
        self.check_keys(t, CONDITION_KEYS, &format!("`{what}` conditions"));
        let mut c = ConditionsDef::default();
        let get = |k: &str| t.get(k);
        if let Some(x) = get("users") {
            c.users = self.strings(x, "users");
        }
        if let Some(x) = get("groups") {
            c.groups = self.strings(x, "groups");
        }
        if let Some(x) = get("devices") {
            c.devices = self.strings(x, "devices");
        }
        if let Some(x) = get("networks") {
            c.networks = self.strings(x, "networks");
        }
        if let Some(x) = get("processes") {
            c.processes = self.strings(x, "processes");
        }
        if let Some(x) = get("categories") {
            c.categories = self.strings(x, "categories");
        }
        if let Some(x) = get("apps") {
            c.apps = self.strings(x, "apps");
        }
        if let Some(x) = get("lists") {
            c.lists = self.strings(x, "lists");
        }
        if let Some(x) = get("hosts") {
            c.hosts = self.patterns(x, "hosts");
        }
        if let Some(x) = get("methods") {
            c.methods = self
                .strings(x, "methods")
                .into_iter()
                .map(|r| r.name.to_ascii_uppercase())
                .collect();
        }
        if let Some(x) = get("file_types") {
            c.file_types = self
                .strings(x, "file_types")
                .into_iter()
                .map(|r| r.name.to_ascii_lowercase())
                .collect();
        }
        if let Some(x) = get("ports") {
            c.ports = self.ports(x);
        }
        if let Some(x) = get("verdicts") {
            c.verdicts = self.verdicts(x);
        }
        if let Some(x) = get("dlp") {
            c.dlp = self
                .strings(x, "dlp")
                .into_iter()
                .map(|r| r.name.trim().to_ascii_lowercase())
                .collect();
        }
        if let Some(x) = get("direction") {
            c.direction = self.direction(x);
        }
        if let Some(x) = get("size") {
            c.size = self.size(x);
        }
        if what == "unless" && t.is_empty() {
            self.error(&v.span(), "`unless` is empty; remove it");
        }
        Some(c)
    }

    /// Verdict names, checked here: a misspelt verdict would silently never match.
    fn verdicts(&mut self, v: &Value<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.strings(v, "verdicts") {
            let name = r.name.trim().to_ascii_lowercase();
            if VERDICTS.contains(&name.as_str()) {
                out.push(name);
            } else {
                self.diags.push(
                    Diagnostic::error(
                        &r.loc,
                        format!(
                            "unknown verdict \"{}\" (expected one of: {})",
                            r.name,
                            VERDICTS.join(", ")
                        ),
                    )
                    .with_suggestion(suggest(&name, VERDICTS.iter().copied())),
                );
            }
        }
        out
    }

    /// `direction = "download"`, or a list of one (two would match everything).
    fn direction(&mut self, v: &Value<'_>) -> Option<Direction> {
        let item = match v.get_ref() {
            DeValue::Array(a) if a.len() == 1 => &a[0],
            DeValue::Array(_) => {
                self.error(
                    &v.span(),
                    "direction takes one value, \"download\" or \"upload\"; remove it to match both",
                );
                return None;
            }
            _ => v,
        };
        let s = self.string(item, "direction")?;
        match Direction::parse(s.trim()) {
            Some(d) => Some(d),
            None => {
                let loc = self.loc(&item.span());
                self.diags.push(
                    Diagnostic::error(
                        &loc,
                        format!(
                            "unknown direction \"{s}\" (expected one of: {})",
                            Direction::NAMES.join(", ")
                        ),
                    )
                    .with_suggestion(suggest(&s, Direction::NAMES.iter().copied())),
                );
                None
            }
        }
    }

    /// `size = { min = "10MB", max = "1GiB" }`: either bound optional, in bytes
    /// or with a unit; `min` must not exceed `max`.
    fn size(&mut self, v: &Value<'_>) -> Option<(Option<u64>, Option<u64>)> {
        let t = self.table(v, "size")?;
        self.check_keys(t, &["min", "max"], "`size`");
        let mut bound = |key: &str| -> Option<u64> {
            let b = t.get(key)?;
            let parsed = match b.get_ref() {
                DeValue::Integer(i) => i.as_str().parse::<u64>().ok(),
                DeValue::String(s) => parse_size(s),
                _ => None,
            };
            if parsed.is_none() {
                self.error(
                    &b.span(),
                    format!("size {key} must be a number of bytes or a size like \"10MB\", \"512KiB\", \"1.5GB\" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
                );
            }
            parsed
        };
        let (min, max) = (bound("min"), bound("max"));
        if t.get("min").is_none() && t.get("max").is_none() {
            self.error(&v.span(), "size needs `min`, `max` or both");
            return None;
        }
        if let (Some(a), Some(b)) = (min, max) {
            if a > b {
                let at = t.get("min").map(|m| m.span()).unwrap_or(v.span());
                self.error(
                    &at,
                    format!("size min ({a} bytes) is larger than max ({b} bytes)"),
                );
                return None;
            }
        }
        // A bound that failed to parse was reported; do not widen the rule silently.
        let given = |key: &str, parsed: Option<u64>| t.get(key).is_none() || parsed.is_some();
        (given("min", min) && given("max", max)).then_some((min, max))
    }

    fn ports(&mut self, v: &Value<'_>) -> Vec<(u16, u16)> {
        let items: Vec<&Value<'_>> = match v.get_ref() {
            DeValue::Array(a) => {
                if a.is_empty() {
                    self.error(&v.span(), "ports is empty; remove it to match any port");
                }
                a.iter().collect()
            }
            _ => vec![v],
        };
        let mut out = Vec::new();
        for item in items {
            let parsed = match item.get_ref() {
                DeValue::Integer(i) => i
                    .as_str()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .map(|p| (p, p)),
                DeValue::String(s) => parse_port_range(s),
                _ => None,
            };
            match parsed {
                Some(r) => out.push(r),
                None => self.error(
                    &item.span(),
                    "ports must be numbers 1-65535 or ranges like \"8000-8999\"",
                ),
            }
        }
        out
    }
}

/// Parses a byte size: `1234`, `10MB` (10^6), `512KiB` (2^10), `1.5 GB`.
/// Units ignore case except that `kib`-style names are binary and `kb`-style
/// decimal, as in `bytesize` and IEC 80000-13. `None` on anything else,
/// negative numbers, or more than `u64::MAX` bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(multiplier),
        Some((int, frac)) => {
            // Exact decimal arithmetic: "1.5GB" is 1_500_000_000, not a float's guess.
            if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 12 {
                return None;
            }
            let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
            let digits: u128 = if frac.is_empty() {
                0
            } else {
                frac.parse().ok()?
            };
            let scale = 10u128.pow(frac.len() as u32);
            let total =
                u128::from(int) * u128::from(multiplier) + digits * u128::from(multiplier) / scale;
            u64::try_from(total).ok()
        }
    }
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

pub(crate) fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Upstream proxies are `http://host:port` (CONNECT chaining); nothing else is spoken.
fn check_proxy_url(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(format!(
            "upstream proxy \"{s}\" must start with http:// (e.g. \"http://proxy.example:3128\")"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "upstream proxy \"{s}\" needs a port (e.g. \"http://{rest}:3128\")"
        ));
    };
    if host.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!("upstream proxy \"{s}\" must be http://host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "upstream proxy \"{s}\" has an invalid port \"{port}\""
        )),
    }
}
