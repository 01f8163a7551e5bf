//! The compiled policy: immutable, `Send + Sync`, shared in an `Arc` and swapped
//! atomically by the gateway on reload.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::action::{AccessAction, DecryptionAction, Egress, Stage, SteeringAction};
use crate::category_source;
use crate::diagnostic::{suggest, Diagnostic, Location, PolicyError, SourceMap};
use crate::domain::{DomainMode, Pattern};
use crate::domain_index::{DomainIndex, MAX_TARGETS};
use crate::glob::{Glob, PathPattern};
use crate::model::*;
use crate::parser::{parse_cidr, parse_document};
use crate::rule::{Conds, Rule, RuleAction};
use crate::verdict::ObjectKind;

/// The app catalog shipped with Rampart.
pub(crate) const CATALOG: &str = include_str!("../catalog/apps.toml");
pub(crate) const CATALOG_ORIGIN: &str = "<app catalog>";

/// A named destination object: category, custom category, app, list or inline hosts.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub kind: ObjectKind,
    pub name: Arc<str>,
    /// Objects that contain this one (custom categories, an app's category), transitively.
    pub ancestors: Vec<u32>,
    pub pins_certificates: bool,
    pub display_name: Option<Arc<str>>,
    pub domains: usize,
}

/// What a domain index entry points at: an object, optionally only for some paths.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub object: u32,
    pub path: Option<PathPattern>,
}

/// Names compared without ASCII case.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, u32>,
    pub names: Vec<Arc<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        let key = name.to_ascii_lowercase();
        if let Some(id) = self.ids.get(key.as_str()) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(key.into_boxed_str(), id);
        self.names.push(Arc::from(name));
        id
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.ids.get(name.to_ascii_lowercase().as_str()).copied()
        } else {
            self.ids.get(name).copied()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

/// The rules of one stage, indexed by their most selective condition so that a
/// request only looks at rules that can concern it.
#[derive(Debug, Clone)]
pub(crate) struct RuleSet {
    pub rules: Vec<Rule>,
    pub by_object: Vec<Vec<u32>>,
    pub by_user: Vec<Vec<u32>>,
    pub by_group: Vec<Vec<u32>>,
    pub by_device: Vec<Vec<u32>>,
    pub always: Vec<u32>,
    pub default: RuleAction,
    pub default_log: bool,
    /// Shared names for decisions made by the default, so they cost no allocation.
    pub default_id: Arc<str>,
    pub default_name: Arc<str>,
}

/// A proxy of an upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    /// As written: `http://host:port`.
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// A named `[upstreams.<name>]` group; proxies are tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamGroup {
    pub name: Arc<str>,
    pub proxies: Vec<UpstreamProxy>,
}

/// An app of the catalog (or added by the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub pins_certificates: bool,
}

/// Sizes of a compiled policy, for `policy check` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyStats {
    pub domains: usize,
    pub objects: usize,
    pub rules: usize,
    pub heap_bytes: usize,
}

/// A compiled policy. Cheap to share (`Arc<Policy>`); evaluation never does I/O.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Shared: every flow record of the gateway carries it.
    pub(crate) revision: Arc<str>,
    pub(crate) objects: Vec<Object>,
    pub(crate) targets: Vec<Target>,
    pub(crate) domains: DomainIndex,
    pub(crate) cidrs: Vec<(IpNet, u32)>,
    pub(crate) users: Interner,
    pub(crate) groups: Interner,
    pub(crate) devices: Interner,
    pub(crate) user_groups: Vec<Vec<u32>>,
    pub(crate) device_groups: Vec<Vec<u32>>,
    pub(crate) networks: Vec<Arc<str>>,
    pub(crate) stages: Vec<RuleSet>,
    pub(crate) upstreams: Vec<UpstreamGroup>,
}

/// How [`Policy::load_with`] treats its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept a file with nothing but whitespace and comments (an empty policy: the
    /// built-in defaults). Off by default, because a file being written looks empty.
    pub allow_empty: bool,
}

/// Whether a TOML text holds nothing but whitespace and comments. A line that
/// starts with `#` outside a multi-line string can only be a comment, and a
/// multi-line string needs a key line before it, so line-wise is exact here.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim_start_matches(['\u{feff}', ' ', '\t', '\r']);
        l.is_empty() || l.starts_with('#')
    })
}

/// One policy source text.
struct Source {
    origin: String,
    text: String,
    base_dir: PathBuf,
}

impl Policy {
    /// Loads a policy file, or every `*.toml` file of a directory (in name order;
    /// rules of later files come after rules of earlier ones). Category paths are
    /// relative to the file that names them. Returns warnings alongside the policy;
    /// on error, every diagnostic at once.
    ///
    /// A file that holds nothing but whitespace and comments is an error ("policy
    /// file is empty"): it is what a reader sees while an editor or `cp` is still
    /// writing the file, and loading it would silently drop every rule. Use
    /// [`Policy::load_with`] to accept it on purpose.
    pub fn load(path: &Path) -> Result<(Policy, Vec<Diagnostic>), PolicyError> {
        Self::load_with(path, LoadOptions::default())
    }

    /// [`Policy::load`] with options.
    pub fn load_with(
        path: &Path,
        options: LoadOptions,
    ) -> Result<(Policy, Vec<Diagnostic>), PolicyError> {
        let io_error = |msg: String| PolicyError {
            diagnostics: vec![Diagnostic::error(
                &Location {
                    file: Arc::from(path.display().to_string()),
                    line: 1,
                    column: 1,
                },
                msg,
            )],
        };
        let mut files = Vec::new();
        if path.is_dir() {
            let entries = fs::read_dir(path)
                .map_err(|e| io_error(format!("cannot list policy directory: {e}")))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(io_error("policy directory holds no .toml files".into()));
            }
        } else {
            files.push(path.to_path_buf());
        }
        let mut sources = Vec::new();
        for f in files {
            let text = fs::read_to_string(&f)
                .map_err(|e| io_error(format!("cannot read {}: {e}", f.display())))?;
            if !options.allow_empty && is_blank(&text) {
                return Err(PolicyError {
                    diagnostics: vec![Diagnostic::error(
                        &Location {
                            file: Arc::from(f.display().to_string()),
                            line: 1,
                            column: 1,
                        },
                        "policy file is empty (nothing but whitespace and comments); \
                         write at least one table, or delete the file"
                            .to_string(),
                    )],
                });
            }
            let base_dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
            sources.push(Source {
                origin: f.display().to_string(),
                text,
                base_dir,
            });
        }
        compile(&sources)
    }

    /// Compiles a policy from text. `origin` names it in diagnostics; category paths
    /// are relative to `base_dir`.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(
        src: &str,
        origin: &str,
        base_dir: &Path,
    ) -> Result<(Policy, Vec<Diagnostic>), PolicyError> {
        compile(&[Source {
            origin: origin.to_string(),
            text: src.to_string(),
            base_dir: base_dir.to_path_buf(),
        }])
    }

    /// The policy used when none is configured: allow and log everything, decrypt
    /// everything except the catalog's certificate-pinning apps, go direct.
    pub fn builtin_default() -> Policy {
        match Policy::from_str("", "<built-in default policy>", Path::new(".")) {
            Ok((p, _)) => p,
            // Only a broken embedded catalog can fail here (unit-tested); still never panic.
            Err(_) => Policy::empty(),
        }
    }

    fn empty() -> Policy {
        let set = |default: RuleAction, stage: Stage| RuleSet {
            default_id: Arc::from("default"),
            default_name: Arc::from(format!("{stage} default")),
            rules: Vec::new(),
            by_object: Vec::new(),
            by_user: Vec::new(),
            by_group: Vec::new(),
            by_device: Vec::new(),
            always: Vec::new(),
            default,
            default_log: true,
        };
        Policy {
            revision: "empty".into(),
            objects: Vec::new(),
            targets: Vec::new(),
            domains: DomainIndex::new(),
            cidrs: Vec::new(),
            users: Interner::default(),
            groups: Interner::default(),
            devices: Interner::default(),
            user_groups: Vec::new(),
            device_groups: Vec::new(),
            networks: Vec::new(),
            stages: vec![
                set(RuleAction::Steering(SteeringAction::Steer), Stage::Steering),
                set(
                    RuleAction::Decryption(DecryptionAction::Decrypt),
                    Stage::Decryption,
                ),
                set(RuleAction::Access(AccessAction::Allow), Stage::Access),
                set(RuleAction::Egress(Egress::Direct), Stage::Egress),
            ],
            upstreams: Vec::new(),
        }
    }

    /// A stable hash of the policy text and every category file it loaded.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// [`Policy::revision`] as a shared string, for records that keep it
    /// (one per request in the gateway) without copying it.
    pub fn revision_shared(&self) -> &Arc<str> {
        &self.revision
    }

    /// The groups `[identities]` gives `user`, so the gateway records on events
    /// the groups its decisions used.
    pub fn groups_of_user<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.users
            .get(user)
            .and_then(|u| self.user_groups.get(u as usize))
            .into_iter()
            .flatten()
            .map(move |g| &*self.groups.names[*g as usize])
    }

    /// The named upstream proxy groups, for the gateway's connectors.
    pub fn upstream_groups(&self) -> &[UpstreamGroup] {
        &self.upstreams
    }

    /// Every app known to this policy (catalog plus policy additions).
    pub fn apps(&self) -> impl Iterator<Item = AppInfo> + '_ {
        self.objects
            .iter()
            .filter(|o| o.kind == ObjectKind::App)
            .map(|o| AppInfo {
                id: o.name.clone(),
                name: o.display_name.clone().unwrap_or_else(|| o.name.clone()),
                pins_certificates: o.pins_certificates,
            })
    }

    pub fn stats(&self) -> PolicyStats {
        PolicyStats {
            domains: self.domains.len(),
            objects: self.objects.len(),
            rules: self.stages.iter().map(|s| s.rules.len()).sum(),
            heap_bytes: self.domains.heap_bytes()
                + self.targets.capacity() * std::mem::size_of::<Target>()
                + self.objects.capacity() * std::mem::size_of::<Object>(),
        }
    }

    /// Rules the policy's own files define: [`PolicyStats::rules`] without the
    /// rules Rampart adds itself (the built-in pinned-apps rule). Zero for an empty
    /// policy, which is how a reload tells a policy that lost its rules.
    pub fn own_rules(&self) -> usize {
        self.stages
            .iter()
            .flat_map(|s| &s.rules)
            .filter(|r| &*r.loc.file != CATALOG_ORIGIN)
            .count()
    }

    pub(crate) fn stage(&self, stage: Stage) -> &RuleSet {
        &self.stages[stage as usize]
    }
}

/// Builds a compiled policy from sources, collecting every diagnostic.
fn compile(sources: &[Source]) -> Result<(Policy, Vec<Diagnostic>), PolicyError> {
    let mut diags = Vec::new();
    let mut hasher = Sha256::new();
    let mut docs = Vec::new();
    let catalog_map = SourceMap::new(CATALOG_ORIGIN, CATALOG);
    let catalog =
        parse_document(&catalog_map, CATALOG, Path::new("."), &mut diags).unwrap_or_default();
    let mut parsed_all = true;
    for s in sources {
        // The revision is a hash of content, never of how a path is spelled
        // (`policy.toml` and `/abs/policy.toml` must give the same revision):
        // a directory's files are told apart by their file names only.
        let name = Path::new(&s.origin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(s.text.as_bytes());
        hasher.update([0]);
        let map = SourceMap::new(&s.origin, &s.text);
        match parse_document(&map, &s.text, &s.base_dir, &mut diags) {
            Some(d) => docs.push(d),
            None => parsed_all = false,
        }
    }
    if !parsed_all {
        return Err(PolicyError {
            diagnostics: sorted(diags),
        });
    }
    let mut c = Compiler::new(&mut diags);
    c.build(&catalog, &docs, &mut hasher);
    let policy = c.finish(hasher);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(PolicyError {
            diagnostics: sorted(diags),
        });
    }
    Ok((policy, sorted(diags)))
}

fn sorted(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    diags.dedup();
    diags
}

struct Compiler<'d> {
    diags: &'d mut Vec<Diagnostic>,
    policy: Policy,
    object_ids: HashMap<(u8, String), u32>,
    host_targets: HashMap<u32, u32>,
    /// Direct containers of each object, before transitive closure.
    parents: Vec<Vec<u32>>,
    list_used: Vec<bool>,
    list_locs: Vec<Location>,
    upstream_used: Vec<(Location, bool)>,
    app_domain_sets: HashMap<String, u32>,
}

/// Name spaces of objects: categories and custom categories share one.
const NS_CATEGORY: u8 = 0;
const NS_APP: u8 = 1;
const NS_LIST: u8 = 2;
const NS_HOSTS: u8 = 3;

impl<'d> Compiler<'d> {
    fn new(diags: &'d mut Vec<Diagnostic>) -> Self {
        Compiler {
            diags,
            policy: Policy::empty(),
            object_ids: HashMap::new(),
            host_targets: HashMap::new(),
            parents: Vec::new(),
            list_used: Vec::new(),
            list_locs: Vec::new(),
            upstream_used: Vec::new(),
            app_domain_sets: HashMap::new(),
        }
    }

    fn error(&mut self, loc: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(loc, msg));
    }

    fn object(&mut self, ns: u8, kind: ObjectKind, name: &str) -> u32 {
        if let Some(id) = self.object_ids.get(&(ns, name.to_string())) {
            return *id;
        }
        let id = self.policy.objects.len() as u32;
        self.policy.objects.push(Object {
            kind,
            name: Arc::from(name),
            ancestors: Vec::new(),
            pins_certificates: false,
            display_name: None,
            domains: 0,
        });
        self.parents.push(Vec::new());
        self.object_ids.insert((ns, name.to_string()), id);
        id
    }

    fn target(&mut self, object: u32, path: Option<PathPattern>) -> Option<u32> {
        if path.is_none() {
            if let Some(t) = self.host_targets.get(&object) {
                return Some(*t);
            }
        }
        let id = self.policy.targets.len() as u32;
        if id >= MAX_TARGETS {
            return None;
        }
        let host_level = path.is_none();
        self.policy.targets.push(Target { object, path });
        if host_level {
            self.host_targets.insert(object, id);
        }
        Some(id)
    }

    fn add_pattern(&mut self, object: u32, pattern: &Pattern) {
        match pattern {
            Pattern::Cidr(net) => self.policy.cidrs.push((*net, object)),
            Pattern::Host { host, mode, path } => {
                if let Some(t) = self.target(object, path.clone()) {
                    self.policy.domains.insert(host, t, mode.flags());
                    self.policy.objects[object as usize].domains += 1;
                }
            }
        }
    }

    fn build(&mut self, catalog: &Document, docs: &[Document], hasher: &mut Sha256) {
        for doc in docs {
            for load in &doc.category_loads {
                self.load_categories(load, hasher);
            }
        }
        self.apps(catalog, docs);
        self.lists(docs);
        self.custom_categories(docs);
        self.close_ancestors();
        self.identities(docs);
        self.upstreams(docs);
        self.rules(docs);
        self.warn_unused();
    }

    fn load_categories(&mut self, load: &CategoryLoad, hasher: &mut Sha256) {
        let files = match category_source::discover(&load.path, load.name.as_deref()) {
            Ok(f) => f,
            Err(msg) => {
                let loc = load.loc.clone();
                self.error(&loc, format!("category source \"{}\": {msg}", load.written));
                return;
            }
        };
        for file in files {
            let object = self.object(NS_CATEGORY, ObjectKind::Category, &file.category);
            // The category name, not the path: the same files give the same
            // revision wherever the policy is read from.
            hasher.update(file.category.as_bytes());
            hasher.update([0]);
            let mut entries: Vec<(String, Option<PathPattern>)> = Vec::new();
            let host_target = self.target(object, None);
            let result = category_source::read_entries(
                &file.path,
                |bytes| hasher.update(bytes),
                |host, path| match (path, host_target) {
                    (None, Some(t)) => {
                        self.policy.domains.insert(
                            host,
                            t,
                            DomainMode::DomainAndSubdomains.flags(),
                        );
                        self.policy.objects[object as usize].domains += 1;
                    }
                    (path, _) => entries.push((host.to_string(), path)),
                },
            );
            for (host, path) in entries {
                if let Some(t) = self.target(object, path) {
                    self.policy
                        .domains
                        .insert(&host, t, DomainMode::Exact.flags());
                    self.policy.objects[object as usize].domains += 1;
                }
            }
            match result {
                Ok(skipped) if skipped.count > 0 => {
                    let loc = Location {
                        file: Arc::from(file.path.display().to_string()),
                        line: skipped.first_line as u32,
                        column: 1,
                    };
                    self.diags.push(Diagnostic::warning(
                        &loc,
                        format!(
                            "skipped {} invalid entr{} in category \"{}\" (first: {})",
                            skipped.count,
                            if skipped.count == 1 { "y" } else { "ies" },
                            file.category,
                            skipped.first_reason
                        ),
                    ));
                }
                Ok(_) => {}
                Err(msg) => {
                    let loc = load.loc.clone();
                    self.error(&loc, msg);
                }
            }
        }
    }

    fn apps(&mut self, catalog: &Document, docs: &[Document]) {
        for app in &catalog.apps {
            self.app(app, true);
        }
        let mut seen: HashMap<String, Location> = HashMap::new();
        for doc in docs {
            for app in &doc.apps {
                if let Some(first) = seen.get(&app.id) {
                    let msg = format!("app \"{}\" is defined twice (first at {first})", app.id);
                    let loc = app.loc.clone();
                    self.error(&loc, msg);
                    continue;
                }
                seen.insert(app.id.clone(), app.loc.clone());
                self.app(app, false);
            }
        }
    }

    fn app(&mut self, app: &AppDef, from_catalog: bool) {
        let exists = self.object_ids.contains_key(&(NS_APP, app.id.clone()));
        let id = self.object(NS_APP, ObjectKind::App, &app.id);
        if !exists && !from_catalog && app.domains.is_empty() {
            let loc = app.loc.clone();
            self.error(
                &loc,
                format!(
                    "app \"{}\" is not in the catalog and has no `domains`",
                    app.id
                ),
            );
        }
        for d in &app.domains {
            self.add_pattern(id, &d.pattern);
        }
        let obj = &mut self.policy.objects[id as usize];
        if let Some(p) = app.pins_certificates {
            obj.pins_certificates = p;
        }
        if let Some(n) = &app.name {
            obj.display_name = Some(Arc::from(n.as_str()));
        }
        if let Some(cat) = &app.category {
            let cat_id = self.object(NS_CATEGORY, ObjectKind::Category, cat);
            if !self.parents[id as usize].contains(&cat_id) {
                self.parents[id as usize].push(cat_id);
            }
        }
        self.app_domain_sets.insert(app.id.clone(), id);
    }

    fn lists(&mut self, docs: &[Document]) {
        let mut seen: HashMap<String, Location> = HashMap::new();
        for doc in docs {
            for list in &doc.lists {
                if let Some(first) = seen.get(&list.name) {
                    let msg = format!("list \"{}\" is defined twice (first at {first})", list.name);
                    let loc = list.loc.clone();
                    self.error(&loc, msg);
                    continue;
                }
                seen.insert(list.name.clone(), list.loc.clone());
                let id = self.object(NS_LIST, ObjectKind::List, &list.name);
                for e in &list.entries {
                    self.add_pattern(id, &e.pattern);
                }
                self.list_used.resize(self.policy.objects.len(), false);
                self.list_locs
                    .resize(self.policy.objects.len(), list.loc.clone());
                self.list_locs[id as usize] = list.loc.clone();
            }
        }
        self.list_used.resize(self.policy.objects.len(), false);
    }

    fn mark_list_used(&mut self, id: u32) {
        if let Some(u) = self.list_used.get_mut(id as usize) {
            *u = true;
        }
    }

    fn names_in(&self, ns: u8) -> Vec<String> {
        let mut v: Vec<String> = self
            .object_ids
            .keys()
            .filter(|(n, _)| *n == ns)
            .map(|(_, name)| name.clone())
            .collect();
        v.sort();
        v
    }

    fn resolve(&mut self, ns: u8, what: &str, r: &Ref) -> Option<u32> {
        if let Some(id) = self.object_ids.get(&(ns, r.name.clone())) {
            return Some(*id);
        }
        let names = self.names_in(ns);
        let hint = if names.is_empty() && ns == NS_CATEGORY {
            " (no categories are loaded: add `[categories] load = [\"<dir>\"]`)"
        } else {
            ""
        };
        self.diags.push(
            Diagnostic::error(&r.loc, format!("unknown {what} \"{}\"{hint}", r.name))
                .with_suggestion(suggest(&r.name, names.iter().map(String::as_str))),
        );
        None
    }

    fn custom_categories(&mut self, docs: &[Document]) {
        // Create all first so custom categories can contain each other in any order.
        for doc in docs {
            for cc in &doc.custom_categories {
                if let Some(&existing) = self.object_ids.get(&(NS_CATEGORY, cc.name.clone())) {
                    let kind = self.policy.objects[existing as usize].kind;
                    let what = if kind == ObjectKind::CustomCategory {
                        "custom category"
                    } else {
                        "category"
                    };
                    let msg = format!(
                        "custom category \"{}\" has the name of an existing {what}",
                        cc.name
                    );
                    let loc = cc.loc.clone();
                    self.error(&loc, msg);
                    continue;
                }
                self.object(NS_CATEGORY, ObjectKind::CustomCategory, &cc.name);
            }
        }
        for doc in docs {
            for cc in &doc.custom_categories {
                let Some(&id) = self.object_ids.get(&(NS_CATEGORY, cc.name.clone())) else {
                    continue;
                };
                for r in &cc.categories {
                    if let Some(member) = self.resolve(NS_CATEGORY, "category", r) {
                        if member == id {
                            self.error(
                                &r.loc,
                                format!("custom category \"{}\" contains itself", cc.name),
                            );
                        } else {
                            self.parents[member as usize].push(id);
                        }
                    }
                }
                for r in &cc.lists {
                    if let Some(member) = self.resolve(NS_LIST, "list", r) {
                        self.mark_list_used(member);
                        self.parents[member as usize].push(id);
                    }
                }
            }
        }
    }

    /// Transitive closure of containment, so evaluation adds ancestors in one step.
    fn close_ancestors(&mut self) {
        let n = self.parents.len();
        for start in 0..n {
            let mut seen: Vec<u32> = Vec::new();
            let mut stack: Vec<u32> = self.parents[start].clone();
            while let Some(p) = stack.pop() {
                if p as usize == start || seen.contains(&p) {
                    continue;
                }
                seen.push(p);
                stack.extend(self.parents[p as usize].iter().copied());
            }
            seen.sort_unstable();
            self.policy.objects[start].ancestors = seen;
        }
    }

    fn identities(&mut self, docs: &[Document]) {
        let mut user_seen: HashMap<String, Location> = HashMap::new();
        for doc in docs {
            for u in &doc.users {
                if let Some(first) = user_seen.get(&u.name.to_ascii_lowercase()) {
                    let msg = format!("user \"{}\" is defined twice (first at {first})", u.name);
                    let loc = u.loc.clone();
                    self.error(&loc, msg);
                    continue;
                }
                user_seen.insert(u.name.to_ascii_lowercase(), u.loc.clone());
                let id = self.policy.users.intern(&u.name) as usize;
                let groups: Vec<u32> = u
                    .groups
                    .iter()
                    .map(|g| self.policy.groups.intern(&g.name))
                    .collect();
                if self.policy.user_groups.len() <= id {
                    self.policy.user_groups.resize(id + 1, Vec::new());
                }
                self.policy.user_groups[id] = groups;
            }
            for d in &doc.devices {
                let id = self.policy.devices.intern(&d.name) as usize;
                let groups: Vec<u32> = d
                    .groups
                    .iter()
                    .map(|g| self.policy.devices.intern(&g.name))
                    .collect();
                if self.policy.device_groups.len() <= id {
                    self.policy.device_groups.resize(id + 1, Vec::new());
                }
                self.policy.device_groups[id] = groups;
            }
        }
    }

    fn upstreams(&mut self, docs: &[Document]) {
        for doc in docs {
            for u in &doc.upstreams {
                if self.policy.upstreams.iter().any(|g| *g.name == *u.name) {
                    let loc = u.loc.clone();
                    self.error(&loc, format!("upstream \"{}\" is defined twice", u.name));
                    continue;
                }
                let proxies = u
                    .proxies
                    .iter()
                    .filter_map(|(url, _)| {
                        let rest = url.strip_prefix("http://")?.trim_end_matches('/');
                        let (host, port) = rest.rsplit_once(':')?;
                        Some(UpstreamProxy {
                            url: url.clone(),
                            host: host
                                .trim_start_matches('[')
                                .trim_end_matches(']')
                                .to_string(),
                            port: port.parse().ok()?,
                        })
                    })
                    .collect();
                self.policy.upstreams.push(UpstreamGroup {
                    name: Arc::from(u.name.as_str()),
                    proxies,
                });
                self.upstream_used.push((u.loc.clone(), false));
            }
        }
    }

    fn egress(&mut self, def: &EgressDef) -> Option<Egress> {
        Some(match def {
            EgressDef::Direct => Egress::Direct,
            EgressDef::Source(ip) => Egress::Source(*ip),
            EgressDef::Via(r) => {
                let pos = self
                    .policy
                    .upstreams
                    .iter()
                    .position(|g| *g.name == *r.name);
                match pos {
                    Some(i) => {
                        self.upstream_used[i].1 = true;
                        Egress::Upstream(self.policy.upstreams[i].name.clone())
                    }
                    None => {
                        let names: Vec<String> = self
                            .policy
                            .upstreams
                            .iter()
                            .map(|g| g.name.to_string())
                            .collect();
                        self.diags.push(
                            Diagnostic::error(&r.loc, format!("unknown upstream \"{}\"", r.name))
                                .with_suggestion(suggest(
                                    &r.name,
                                    names.iter().map(String::as_str),
                                )),
                        );
                        return None;
                    }
                }
            }
        })
    }

    fn conds(
        &mut self,
        c: &ConditionsDef,
        rule_label: &str,
        networks: &HashMap<String, Vec<IpNet>>,
    ) -> Conds {
        let mut out = Conds {
            users: c
                .users
                .iter()
                .map(|r| self.policy.users.intern(&r.name))
                .collect(),
            groups: c
                .groups
                .iter()
                .map(|r| self.policy.groups.intern(&r.name))
                .collect(),
            ..Default::default()
        };
        out.devices = c
            .devices
            .iter()
            .map(|r| self.policy.devices.intern(&r.name))
            .collect();
        for r in &c.networks {
            if let Some(cidrs) = networks.get(&r.name) {
                let id = match self.policy.networks.iter().position(|n| **n == *r.name) {
                    Some(i) => i as u32,
                    None => {
                        self.policy.networks.push(Arc::from(r.name.as_str()));
                        self.policy.networks.len() as u32 - 1
                    }
                };
                out.networks.extend(cidrs.iter().map(|n| (id, *n)));
            } else if let Some(net) = parse_cidr(&r.name) {
                self.policy.networks.push(Arc::from(r.name.as_str()));
                out.networks
                    .push((self.policy.networks.len() as u32 - 1, net));
            } else {
                let names: Vec<&str> = networks.keys().map(String::as_str).collect();
                self.diags.push(
                    Diagnostic::error(&r.loc, format!("unknown network \"{}\" (define it in [identities] networks or write a CIDR)", r.name))
                        .with_suggestion(suggest(&r.name, names)),
                );
            }
        }
        out.processes = c
            .processes
            .iter()
            .map(|r| Glob::new(&r.name, true))
            .collect();
        for r in &c.categories {
            if let Some(id) = self.resolve(NS_CATEGORY, "category", r) {
                out.objects.push(id);
            }
        }
        for r in &c.apps {
            if let Some(id) = self.resolve(NS_APP, "app", r) {
                out.objects.push(id);
            }
        }
        for r in &c.lists {
            if let Some(id) = self.resolve(NS_LIST, "list", r) {
                self.mark_list_used(id);
                out.objects.push(id);
            }
        }
        if !c.hosts.is_empty() {
            let id = self.object(NS_HOSTS, ObjectKind::Hosts, rule_label);
            self.list_used.resize(self.policy.objects.len(), false);
            for h in &c.hosts {
                self.add_pattern(id, &h.pattern);
            }
            self.policy.objects[id as usize].ancestors = Vec::new();
            out.objects.push(id);
        }
        out.objects.sort_unstable();
        out.objects.dedup();
        out.ports = c.ports.clone();
        out.methods = c.methods.iter().map(|m| m.as_str().into()).collect();
        out.file_types = c.file_types.iter().map(|m| m.as_str().into()).collect();
        out.verdicts = c.verdicts.iter().map(|v| v.as_str().into()).collect();
        out.dlp = c.dlp.iter().map(|p| p.as_str().into()).collect();
        out.direction = c.direction;
        out.size = c
            .size
            .map(|(min, max)| (min.unwrap_or(0), max.unwrap_or(u64::MAX)));
        out
    }

    fn rules(&mut self, docs: &[Document]) {
        let mut networks: HashMap<String, Vec<IpNet>> = HashMap::new();
        for doc in docs {
            for n in &doc.networks {
                if networks.insert(n.name.clone(), n.cidrs.clone()).is_some() {
                    let loc = n.loc.clone();
                    self.error(&loc, format!("network \"{}\" is defined twice", n.name));
                }
            }
        }
        let mut defaults = DefaultsDef::default();
        for doc in docs {
            let d = &doc.defaults;
            defaults.steering = d.steering.or(defaults.steering);
            defaults.decryption = d.decryption.or(defaults.decryption);
            defaults.access = d.access.or(defaults.access);
            defaults.pinned_apps = d.pinned_apps.or(defaults.pinned_apps);
            defaults.steering_log = d.steering_log.or(defaults.steering_log);
            if d.egress.is_some() {
                defaults.egress = d.egress.clone();
            }
        }
        let mut sets: Vec<Vec<Rule>> = vec![Vec::new(); 4];
        let mut counters = [0usize; 4];
        let mut ids: Vec<HashMap<String, Location>> = vec![HashMap::new(); 4];
        for doc in docs {
            for def in &doc.rules {
                let s = def.stage as usize;
                counters[s] += 1;
                let id = def
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}", def.stage, counters[s]));
                if let Some(first) = ids[s].get(&id) {
                    let msg = format!(
                        "rule id \"{id}\" is used twice in [[{}]] (first at {first})",
                        def.stage
                    );
                    let loc = def.loc.clone();
                    self.error(&loc, msg);
                }
                ids[s].insert(id.clone(), def.loc.clone());
                self.check_stage_conditions(def);
                let label = format!("{}/{}", def.stage, id);
                let when = self.conds(&def.when, &format!("{label} when"), &networks);
                let unless = def
                    .unless
                    .as_ref()
                    .map(|u| self.conds(u, &format!("{label} unless"), &networks));
                let action = match &def.action {
                    Some(ActionDef::Steering(a)) => Some(RuleAction::Steering(*a)),
                    Some(ActionDef::Decryption(a)) => Some(RuleAction::Decryption(*a)),
                    Some(ActionDef::Access(a)) => Some(RuleAction::Access(*a)),
                    Some(ActionDef::Egress(e)) => self.egress(e).map(RuleAction::Egress),
                    None => None,
                };
                if matches!(def.stage, Stage::Steering | Stage::Decryption) {
                    self.warn_path_entries(def, &when, unless.as_ref());
                }
                let Some(action) = action else { continue };
                sets[s].push(Rule {
                    name: Arc::from(def.name.clone().unwrap_or_else(|| id.clone())),
                    id: Arc::from(id),
                    description: def.description.as_deref().map(Arc::from),
                    stage: def.stage,
                    disabled: def.disabled,
                    when,
                    unless,
                    action,
                    log: def.log,
                    loc: def.loc.clone(),
                });
            }
        }
        if defaults
            .pinned_apps
            .unwrap_or(DecryptionAction::DoNotDecrypt)
            == DecryptionAction::DoNotDecrypt
        {
            let pinned: Vec<u32> = (0..self.policy.objects.len() as u32)
                .filter(|&i| {
                    let o = &self.policy.objects[i as usize];
                    o.kind == ObjectKind::App && o.pins_certificates
                })
                .collect();
            if !pinned.is_empty() {
                sets[Stage::Decryption as usize].push(Rule {
                    id: Arc::from("builtin-pinned-apps"),
                    name: Arc::from("certificate-pinning apps are not decrypted"),
                    description: Some(Arc::from(
                        "added because [defaults] pinned_apps = \"do-not-decrypt\" (the default)",
                    )),
                    stage: Stage::Decryption,
                    disabled: false,
                    when: Conds {
                        objects: pinned,
                        ..Default::default()
                    },
                    unless: None,
                    action: RuleAction::Decryption(DecryptionAction::DoNotDecrypt),
                    log: true,
                    loc: Location {
                        file: Arc::from(CATALOG_ORIGIN),
                        line: 1,
                        column: 1,
                    },
                });
            }
        }
        let egress_default = match &defaults.egress {
            Some(e) => self.egress(e).unwrap_or(Egress::Direct),
            None => Egress::Direct,
        };
        let stage_defaults = [
            RuleAction::Steering(defaults.steering.unwrap_or(SteeringAction::Steer)),
            RuleAction::Decryption(defaults.decryption.unwrap_or(DecryptionAction::Decrypt)),
            RuleAction::Access(defaults.access.unwrap_or(AccessAction::Allow)),
            RuleAction::Egress(egress_default),
        ];
        self.warn_undecidable(
            &sets[Stage::Access as usize],
            &sets[Stage::Decryption as usize],
        );
        for (s, rules) in sets.into_iter().enumerate() {
            self.warn_shadowed(&rules);
            let mut set = self.index(
                rules,
                stage_defaults[s].clone(),
                defaults.steering_log.unwrap_or(true),
            );
            set.default_name = Arc::from(format!("{} default", Stage::ALL[s]));
            self.policy.stages[s] = set;
        }
    }

    /// Facts that do not exist at a stage's evaluation point make a rule unmatchable.
    fn check_stage_conditions(&mut self, def: &RuleDef) {
        let conds = std::iter::once(&def.when).chain(def.unless.as_ref());
        let mut problems = Vec::new();
        for c in conds {
            // The response-point conditions, by name: all come from inspection.
            let inspected = [
                ("file_types", !c.file_types.is_empty()),
                ("verdicts", !c.verdicts.is_empty()),
                ("dlp", !c.dlp.is_empty()),
                ("direction", c.direction.is_some()),
                ("size", c.size.is_some()),
            ];
            match def.stage {
                Stage::Steering | Stage::Decryption => {
                    if !c.methods.is_empty() {
                        problems.push(
                            "`methods` (the method is only known after decryption)".to_string(),
                        );
                    }
                    for (name, _) in inspected.iter().filter(|(_, used)| *used) {
                        problems.push(format!(
                            "`{name}` (the content is only known after decryption)"
                        ));
                    }
                }
                Stage::Egress => {
                    for (name, _) in inspected.iter().filter(|(_, used)| *used) {
                        problems.push(format!(
                            "`{name}` (egress is chosen before the response exists)"
                        ));
                    }
                }
                Stage::Access => {}
            }
            if def.stage == Stage::Steering && (!c.users.is_empty() || !c.groups.is_empty()) {
                // Allowed: the agent knows the logged-in user; nothing to report.
            }
        }
        for p in problems {
            let loc = def.loc.clone();
            self.error(&loc, format!("a [[{}]] rule cannot use {p}", def.stage));
        }
    }

    /// Path entries cannot be seen before decryption: say so instead of letting them
    /// silently never match in steering and decryption rules.
    fn warn_path_entries(&mut self, def: &RuleDef, when: &Conds, unless: Option<&Conds>) {
        let objects: Vec<u32> = when
            .objects
            .iter()
            .chain(unless.into_iter().flat_map(|u| u.objects.iter()))
            .copied()
            .collect();
        let mut named: Vec<String> = Vec::new();
        for o in objects {
            let has_paths = self
                .policy
                .targets
                .iter()
                .any(|t| t.object == o && t.path.is_some());
            if has_paths {
                let obj = &self.policy.objects[o as usize];
                named.push(format!("{} \"{}\"", obj.kind.as_str(), obj.name));
            }
        }
        if !named.is_empty() {
            let msg = format!(
                "{} ha{} path entries, which never match in [[{}]] rules (paths are only visible after decryption); only its host entries apply",
                named.join(", "),
                if named.len() == 1 { "s" } else { "ve" },
                def.stage
            );
            self.diags.push(Diagnostic::warning(&def.loc, msg));
        }
    }

    /// An access rule that needs what only decryption shows (method, URL path,
    /// file type) while every destination it names is never decrypted can
    /// never match those tunnels: the gateway skips it there (DESIGN §6), which
    /// is rarely what its author meant.
    fn warn_undecidable(&mut self, access: &[Rule], decryption: &[Rule]) {
        // The decryption rule that decides an object alone, if it only names destinations.
        let never_decrypted = |o: u32| -> Option<&Rule> {
            let mut lineage = vec![o];
            lineage.extend_from_slice(&self.policy.objects[o as usize].ancestors);
            let first = decryption
                .iter()
                .filter(|d| !d.disabled)
                .find(|d| d.when.objects.iter().any(|x| lineage.contains(x)))?;
            let only_destinations = first.unless.is_none()
                && first.when.users.is_empty()
                && first.when.groups.is_empty()
                && first.when.devices.is_empty()
                && first.when.networks.is_empty()
                && first.when.processes.is_empty()
                && first.when.ports.is_empty();
            (only_destinations
                && first.action == RuleAction::Decryption(DecryptionAction::DoNotDecrypt))
            .then_some(first)
        };
        let mut warnings = Vec::new();
        for rule in access.iter().filter(|r| !r.disabled) {
            let w = &rule.when;
            let needs = if !w.methods.is_empty() {
                "the method"
            } else if !w.file_types.is_empty() {
                "the file type"
            } else if w.needs_response() {
                "the inspected body"
            } else {
                continue;
            };
            if w.objects.is_empty() {
                continue;
            }
            let deciders: Option<Vec<&Rule>> =
                w.objects.iter().map(|&o| never_decrypted(o)).collect();
            if let Some(deciders) = deciders {
                let names: Vec<String> = deciders
                    .iter()
                    .map(|d| format!("\"{}\" ({})", d.name, d.loc))
                    .collect();
                let mut names = names;
                names.dedup();
                warnings.push((
                    rule.loc.clone(),
                    format!(
                        "rule \"{}\" needs {needs}, but every destination it names is never decrypted (decryption rule {}): it can never match their tunnels and is skipped there",
                        rule.name,
                        names.join(", ")
                    ),
                ));
            }
        }
        for (loc, msg) in warnings {
            self.diags.push(Diagnostic::warning(&loc, msg));
        }
    }

    fn warn_shadowed(&mut self, rules: &[Rule]) {
        for (j, later) in rules.iter().enumerate() {
            if later.disabled {
                continue;
            }
            let shadow = rules[..j].iter().find(|earlier| {
                !earlier.disabled && earlier.unless.is_none() && later.when.within(&earlier.when)
            });
            if let Some(earlier) = shadow {
                let msg = format!(
                    "rule \"{}\" is never reached: rule \"{}\" ({}) comes first and matches everything it matches",
                    later.name, earlier.name, earlier.loc
                );
                self.diags.push(Diagnostic::warning(&later.loc, msg));
            }
        }
    }

    fn index(&mut self, rules: Vec<Rule>, default: RuleAction, default_log: bool) -> RuleSet {
        let mut set = RuleSet {
            by_object: vec![Vec::new(); self.policy.objects.len()],
            by_user: vec![Vec::new(); self.policy.users.len()],
            by_group: vec![Vec::new(); self.policy.groups.len()],
            by_device: vec![Vec::new(); self.policy.devices.len()],
            always: Vec::new(),
            rules: Vec::new(),
            default,
            default_log,
            default_id: Arc::from("default"),
            default_name: Arc::from("default"),
        };
        for (i, r) in rules.iter().enumerate() {
            if r.disabled {
                continue;
            }
            let i = i as u32;
            let w = &r.when;
            if !w.objects.is_empty() {
                for &o in &w.objects {
                    set.by_object[o as usize].push(i);
                }
            } else if !w.users.is_empty() {
                for &u in &w.users {
                    set.by_user[u as usize].push(i);
                }
            } else if !w.groups.is_empty() {
                for &g in &w.groups {
                    set.by_group[g as usize].push(i);
                }
            } else if !w.devices.is_empty() {
                for &d in &w.devices {
                    set.by_device[d as usize].push(i);
                }
            } else {
                set.always.push(i);
            }
        }
        set.rules = rules;
        set
    }

    fn warn_unused(&mut self) {
        for (id, used) in self.list_used.clone().into_iter().enumerate() {
            let o = &self.policy.objects[id];
            if o.kind == ObjectKind::List && !used {
                let msg = format!(
                    "list \"{}\" is not used by any rule or custom category",
                    o.name
                );
                let loc = self.list_locs[id].clone();
                self.diags.push(Diagnostic::warning(&loc, msg));
            }
        }
        for (i, (loc, used)) in self.upstream_used.clone().into_iter().enumerate() {
            if !used {
                let msg = format!(
                    "upstream \"{}\" is not used by any egress rule",
                    self.policy.upstreams[i].name
                );
                self.diags.push(Diagnostic::warning(&loc, msg));
            }
        }
    }

    fn finish(mut self, hasher: Sha256) -> Policy {
        let digest = hasher.finalize();
        let revision: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.policy.revision = revision.into();
        self.policy.domains.shrink();
        self.policy.targets.shrink_to_fit();
        self.policy
    }
}
