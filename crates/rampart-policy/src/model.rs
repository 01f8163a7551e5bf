//! The policy as written: parsed from TOML, not yet resolved or compiled. Every item
//! keeps its location so validation can point at it.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::action::{AccessAction, DecryptionAction, Stage, SteeringAction};
use crate::diagnostic::Location;
use crate::domain::Pattern;
use crate::facts::Direction;

/// A reference by name to something defined elsewhere (a list, a category...).
#[derive(Debug, Clone)]
pub(crate) struct Ref {
    pub name: String,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct PatternDef {
    pub pattern: Pattern,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberDef {
    pub name: String,
    pub groups: Vec<Ref>,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct NetworkDef {
    pub name: String,
    pub cidrs: Vec<ipnet::IpNet>,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct ListDef {
    pub name: String,
    pub entries: Vec<PatternDef>,
    pub loc: Location,
}

/// A `[categories] load` entry: a UT1/Shallalist directory, a directory of plain
/// lists, or one file (plain domains or hosts format).
#[derive(Debug, Clone)]
pub(crate) struct CategoryLoad {
    pub path: PathBuf,
    /// Category name for a single file (default: the file stem).
    pub name: Option<String>,
    pub written: String,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct CustomCategoryDef {
    pub name: String,
    pub categories: Vec<Ref>,
    pub lists: Vec<Ref>,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct AppDef {
    pub id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub domains: Vec<PatternDef>,
    pub pins_certificates: Option<bool>,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct UpstreamDef {
    pub name: String,
    pub proxies: Vec<(String, Location)>,
    pub loc: Location,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ConditionsDef {
    pub users: Vec<Ref>,
    pub groups: Vec<Ref>,
    pub devices: Vec<Ref>,
    pub networks: Vec<Ref>,
    pub processes: Vec<Ref>,
    pub categories: Vec<Ref>,
    pub apps: Vec<Ref>,
    pub lists: Vec<Ref>,
    pub hosts: Vec<PatternDef>,
    pub ports: Vec<(u16, u16)>,
    pub methods: Vec<String>,
    pub file_types: Vec<String>,
    /// Lowercase, validated names.
    pub verdicts: Vec<String>,
    /// Lowercase profile names (custom profiles live in the gateway config).
    pub dlp: Vec<String>,
    pub direction: Option<Direction>,
    /// Inclusive byte bounds; an absent bound is open.
    pub size: Option<(Option<u64>, Option<u64>)>,
}

#[derive(Debug, Clone)]
pub(crate) enum EgressDef {
    Direct,
    Via(Ref),
    Source(IpAddr),
}

#[derive(Debug, Clone)]
pub(crate) enum ActionDef {
    Steering(SteeringAction),
    Decryption(DecryptionAction),
    Access(AccessAction),
    Egress(EgressDef),
}

#[derive(Debug, Clone)]
pub(crate) struct RuleDef {
    pub stage: Stage,
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub disabled: bool,
    pub when: ConditionsDef,
    pub unless: Option<ConditionsDef>,
    /// `None` when the action was invalid (already reported); conditions are still checked.
    pub action: Option<ActionDef>,
    pub log: bool,
    pub loc: Location,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DefaultsDef {
    pub steering: Option<SteeringAction>,
    pub decryption: Option<DecryptionAction>,
    pub access: Option<AccessAction>,
    pub egress: Option<EgressDef>,
    pub pinned_apps: Option<DecryptionAction>,
    pub steering_log: Option<bool>,
}

/// One parsed policy file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Document {
    pub users: Vec<MemberDef>,
    pub devices: Vec<MemberDef>,
    pub networks: Vec<NetworkDef>,
    pub lists: Vec<ListDef>,
    pub category_loads: Vec<CategoryLoad>,
    pub custom_categories: Vec<CustomCategoryDef>,
    pub apps: Vec<AppDef>,
    pub upstreams: Vec<UpstreamDef>,
    pub defaults: DefaultsDef,
    pub rules: Vec<RuleDef>,
}
