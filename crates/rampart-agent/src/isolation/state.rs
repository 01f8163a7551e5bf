//! `<data dir>/isolation.json`: the desired isolation state, written before the kernel
//! is touched, so an agent that crashes mid-way, is killed or the host that reboots
//! re-applies it at start ([`reapply_at_start`]), before anything is steered.
//!
//! `<data dir>/isolation.nft`: while isolation is wanted, the very batch the agent
//! loads, kept for boot. The kernel forgets the table at a reboot; a oneshot unit
//! ordered before `network-pre.target` runs `nft -f <data dir>/isolation.nft`, so the
//! device comes up isolated before any interface is configured and before the agent
//! (which needs the network) starts. Release deletes the file before the table.

use super::apply::{ApplyReport, Isolator};
use super::error::IsolationError;
use super::readback::KernelState;
use super::table::{ruleset, IsolationSpec};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "desired", rename_all = "kebab-case")]
pub enum Desired {
    Isolated { spec: IsolationSpec },
    Released,
}

/// The persisted record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationState {
    #[serde(flatten)]
    pub desired: Desired,
    /// Why (the operator's reason or the triggering alert), for status output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339 time the desired state was set.
    pub since: String,
}

impl IsolationState {
    pub fn new(desired: Desired, reason: Option<String>) -> Self {
        IsolationState {
            desired,
            reason,
            since: crate::status::now_rfc3339(),
        }
    }
}

/// The status the agent reports: desired state against kernel state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationStatus {
    /// Isolation is wanted but not applied yet.
    Pending,
    /// Wanted and the kernel holds exactly the applied table.
    Isolated,
    /// Release is wanted but the table is still there.
    ReleasePending,
    /// Not isolated, and no table.
    Released,
    /// Isolation is wanted and the kernel's table is missing or differs.
    Drift,
}

impl IsolationStatus {
    /// Combine what is wanted (`None`: never isolated) with what the kernel holds.
    /// An absent table while isolation is wanted is drift: the agent applied it at
    /// start or on command, so someone or something removed it.
    pub fn of(desired: Option<&Desired>, kernel: &KernelState) -> IsolationStatus {
        match (desired, kernel) {
            (Some(Desired::Isolated { .. }), KernelState::Isolated) => IsolationStatus::Isolated,
            (Some(Desired::Isolated { .. }), _) => IsolationStatus::Drift,
            (_, KernelState::Absent) => IsolationStatus::Released,
            (_, _) => IsolationStatus::ReleasePending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IsolationStatus::Pending => "pending",
            IsolationStatus::Isolated => "isolated",
            IsolationStatus::ReleasePending => "release-pending",
            IsolationStatus::Released => "released",
            IsolationStatus::Drift => "drift",
        }
    }
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("isolation.json")
}

/// The batch loaded at boot while isolation is wanted (see the module doc).
pub fn boot_script_path(data_dir: &Path) -> PathBuf {
    data_dir.join("isolation.nft")
}

/// The first lines of the boot script: what it is and who reads it.
const BOOT_SCRIPT_HEADER: &str = "#!/usr/sbin/nft -f\n\
# Written by the Rampart agent while this device is isolated; deleted on release.\n\
# Loaded at boot before the network comes up (`nft -f` this file): see\n\
# docs/isolation.md, \"At boot\". Do not edit: the agent rewrites it.\n";

/// Write the boot script: a temporary file renamed over the old one, so `nft -f` at
/// boot reads a whole batch or the previous one, never half of one. Not synced on
/// its own: [`save`], which always follows, syncs the directory, and an agent start
/// re-applies `isolation.json` anyway (the file only closes the window before it).
fn write_boot_script(data_dir: &Path, script: &str) -> Result<(), IsolationError> {
    let path = boot_script_path(data_dir);
    let tmp = data_dir.join(".isolation.nft.tmp");
    std::fs::create_dir_all(data_dir).map_err(|source| IsolationError::StateIo {
        action: "create the directory of",
        path: path.clone(),
        source,
    })?;
    let mut text = String::with_capacity(BOOT_SCRIPT_HEADER.len() + script.len());
    text.push_str(BOOT_SCRIPT_HEADER);
    text.push_str(script);
    std::fs::write(&tmp, text).map_err(|source| IsolationError::StateIo {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| IsolationError::StateIo {
        action: "replace",
        path,
        source,
    })
}

/// Delete the boot script; fine when there is none.
fn remove_boot_script(data_dir: &Path) -> Result<(), IsolationError> {
    let path = boot_script_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IsolationError::StateIo {
            action: "delete",
            path,
            source,
        }),
    }
}

/// The persisted state, `None` if there is none.
pub fn load(data_dir: &Path) -> Result<Option<IsolationState>, IsolationError> {
    let path = state_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IsolationError::StateIo {
                action: "read",
                path,
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IsolationError::StateInvalid {
            path,
            message: e.to_string(),
        })
}

/// Write atomically: a temporary file in the same directory, synced, then renamed
/// over the old one, so a crash leaves either the old or the new state, never half.
pub fn save(data_dir: &Path, state: &IsolationState) -> Result<(), IsolationError> {
    let path = state_path(data_dir);
    let tmp = data_dir.join(".isolation.json.tmp");
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IsolationError::StateIo {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(data_dir).map_err(io("create the directory of", &path))?;
    let text = serde_json::to_string_pretty(state).map_err(|e| IsolationError::StateInvalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut file = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
    file.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io("replace", &path))?;
    // The rename itself is durable only once the directory is synced.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Isolate: persist the desired state first, then load the table and cut flows.
/// The caller runs [`super::self_test`] afterwards and reports; it never releases on
/// a failed self-test.
pub fn isolate(
    data_dir: &Path,
    isolator: &Isolator,
    spec: IsolationSpec,
    reason: Option<String>,
) -> Result<ApplyReport, IsolationError> {
    if spec.server_addrs.is_empty() && spec.gateway_addrs.is_empty() {
        return Err(IsolationError::NoKeptAddress);
    }
    let (script, expected) = ruleset(&spec);
    write_boot_script(data_dir, &script)?;
    let state = IsolationState::new(Desired::Isolated { spec }, reason);
    save(data_dir, &state)?;
    isolator.load(&script, &expected)
}

/// The same isolation with other addresses (a kept name resolves differently): the
/// rules stay loaded, the sets are refreshed in place and the flows of addresses no
/// longer kept are cut. Falls back to a full [`isolate`] when the rules differ or
/// nothing was isolated. The reason and start time of the isolation are kept.
pub fn refresh(
    data_dir: &Path,
    isolator: &Isolator,
    spec: IsolationSpec,
) -> Result<ApplyReport, IsolationError> {
    let current = load(data_dir)?;
    let (old_spec, reason, since) = match current {
        Some(IsolationState {
            desired: Desired::Isolated { spec: old },
            reason,
            since,
        }) if old.same_rules(&spec) => (old, reason, since),
        // Other rules: a full load, keeping the isolation's reason.
        Some(IsolationState {
            desired: Desired::Isolated { .. },
            reason,
            ..
        }) => return isolate(data_dir, isolator, spec, reason),
        _ => return isolate(data_dir, isolator, spec, None),
    };
    if spec.server_addrs.is_empty() && spec.gateway_addrs.is_empty() {
        return Err(IsolationError::NoKeptAddress);
    }
    let dropped = old_spec.kept_addresses_dropped_by(&spec);
    // The boot script carries the new addresses too.
    write_boot_script(data_dir, &ruleset(&spec).0)?;
    save(
        data_dir,
        &IsolationState {
            desired: Desired::Isolated { spec: spec.clone() },
            reason,
            since,
        },
    )?;
    isolator.refresh_sets(&spec, &dropped)
}

/// Release: persist `released`, then delete the table (this table only).
pub fn release(
    data_dir: &Path,
    isolator: &Isolator,
    reason: Option<String>,
) -> Result<IsolationStatus, IsolationError> {
    save(data_dir, &IsolationState::new(Desired::Released, reason))?;
    remove_boot_script(data_dir)?;
    isolator.release()?;
    status(data_dir, isolator)
}

/// The status to report now (reads the kernel).
pub fn status(data_dir: &Path, isolator: &Isolator) -> Result<IsolationStatus, IsolationError> {
    let desired = load(data_dir)?.map(|s| s.desired);
    let kernel = match &desired {
        Some(Desired::Isolated { spec }) => isolator.kernel_state(spec)?,
        _ => match isolator.read_back()? {
            Some(_) => KernelState::Drift {
                reasons: vec!["table present while released".into()],
            },
            None => KernelState::Absent,
        },
    };
    Ok(IsolationStatus::of(desired.as_ref(), &kernel))
}

/// What [`reapply_at_start`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOutcome {
    /// The kernel state found before doing anything.
    pub found: KernelState,
    /// Set when the table was (re)applied.
    pub applied: Option<ApplyReport>,
    /// Set when a leftover table was deleted because release is wanted.
    pub released: bool,
    /// The status after.
    pub status: IsolationStatus,
}

/// At agent start, before steering: make the kernel match the persisted state. A
/// wanted isolation that is absent or drifted is re-applied; a wanted release with a
/// table left over (crash mid-release) deletes it. No state file: nothing to do.
pub fn reapply_at_start(
    data_dir: &Path,
    isolator: &Isolator,
) -> Result<Option<StartOutcome>, IsolationError> {
    let Some(state) = load(data_dir)? else {
        return Ok(None);
    };
    match &state.desired {
        Desired::Isolated { spec } => {
            // A state written by an agent without boot scripts, or a file lost: the
            // next boot must find it. Best effort: re-applying matters more.
            if let Err(err) = write_boot_script(data_dir, &ruleset(spec).0) {
                tracing::warn!(%err, "cannot write the isolation boot script");
            }
            let found = isolator.kernel_state(spec)?;
            let applied = match found {
                KernelState::Isolated => None,
                _ => Some(isolator.apply(spec)?),
            };
            let after = applied
                .as_ref()
                .map(|a| a.state.clone())
                .unwrap_or(KernelState::Isolated);
            Ok(Some(StartOutcome {
                found,
                applied,
                released: false,
                status: IsolationStatus::of(Some(&state.desired), &after),
            }))
        }
        Desired::Released => {
            if let Err(err) = remove_boot_script(data_dir) {
                tracing::warn!(%err, "cannot delete the isolation boot script");
            }
            let present = isolator.read_back()?.is_some();
            if present {
                isolator.release()?;
            }
            let found = if present {
                KernelState::Drift {
                    reasons: vec!["table present while released".into()],
                }
            } else {
                KernelState::Absent
            };
            Ok(Some(StartOutcome {
                found,
                applied: None,
                released: present,
                status: status(data_dir, isolator)?,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rampart-isolation-state-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_desired_state_round_trips_through_isolation_json() {
        let dir = temp_dir("roundtrip");
        assert_eq!(load(&dir).unwrap(), None, "no file: no desired state");
        let spec = IsolationSpec {
            server_addrs: vec!["192.0.2.1".parse().unwrap()],
            exceptions: super::super::parse_rules(
                "ex.pf",
                "pass out proto tcp to 203.0.113.2 port 22",
            )
            .unwrap(),
            ..Default::default()
        };
        let state = IsolationState::new(Desired::Isolated { spec }, Some("alert 42".into()));
        save(&dir, &state).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(state));
        let text = std::fs::read_to_string(state_path(&dir)).unwrap();
        assert!(text.contains("\"desired\": \"isolated\""), "{text}");
        save(&dir, &IsolationState::new(Desired::Released, None)).unwrap();
        assert_eq!(load(&dir).unwrap().unwrap().desired, Desired::Released);
        assert!(
            !dir.join(".isolation.json.tmp").exists(),
            "the temporary file is renamed"
        );
        std::fs::write(state_path(&dir), "{ not json").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("isolation.json is invalid"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_is_desired_against_kernel() {
        let isolated = Desired::Isolated {
            spec: IsolationSpec::default(),
        };
        let drift = KernelState::Drift { reasons: vec![] };
        let cases = [
            (
                Some(&isolated),
                KernelState::Isolated,
                IsolationStatus::Isolated,
            ),
            (Some(&isolated), KernelState::Absent, IsolationStatus::Drift),
            (Some(&isolated), drift.clone(), IsolationStatus::Drift),
            (
                Some(&Desired::Released),
                KernelState::Absent,
                IsolationStatus::Released,
            ),
            (
                Some(&Desired::Released),
                drift,
                IsolationStatus::ReleasePending,
            ),
            (None, KernelState::Absent, IsolationStatus::Released),
        ];
        for (desired, kernel, want) in cases {
            assert_eq!(
                IsolationStatus::of(desired, &kernel),
                want,
                "{desired:?} {kernel:?}"
            );
        }
        assert_eq!(IsolationStatus::ReleasePending.as_str(), "release-pending");
        assert_eq!(
            serde_json::to_string(&IsolationStatus::ReleasePending).unwrap(),
            "\"release-pending\""
        );
    }

    #[test]
    fn isolating_without_a_kept_address_is_refused_before_anything_is_written() {
        let dir = temp_dir("nokeep");
        let err = isolate(&dir, &Isolator::default(), IsolationSpec::default(), None).unwrap_err();
        assert!(matches!(err, IsolationError::NoKeptAddress), "{err}");
        assert_eq!(load(&dir).unwrap(), None);
    }
}
