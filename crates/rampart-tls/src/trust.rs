//! Making tools trust Rampart: a combined PEM bundle (system roots + the Rampart CA, like
//! the `nscacert_combined.pem` users build by hand) and the environment variables each
//! tool reads.
use crate::ca::{der_to_pem, CertificateAuthority};
use crate::TlsError;
use rustls_pki_types::CertificateDer;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// The system roots as rustls-native-certs finds them (it honours `SSL_CERT_FILE` and
/// `SSL_CERT_DIR`), plus the problems met while reading them.
pub fn system_roots() -> (Vec<CertificateDer<'static>>, Vec<String>) {
    let loaded = rustls_native_certs::load_native_certs();
    let errors = loaded.errors.iter().map(|e| e.to_string()).collect();
    (loaded.certs, errors)
}

/// A composed bundle and what went into it.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub pem: String,
    /// Distinct system roots included.
    pub system_roots: usize,
    /// Rampart CA certificates included (ca.pem's chain, minus any already present).
    pub rampart_certs: usize,
    /// Duplicates dropped.
    pub duplicates: usize,
}

/// System roots first, then the Rampart CA chain, each certificate once (by DER bytes).
pub fn compose_bundle(system: &[CertificateDer<'_>], ca: &CertificateAuthority) -> TrustBundle {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut pem = String::with_capacity((system.len() + 2) * 2000);
    pem.push_str("# Trust bundle written by `rampart trust bundle`: system roots + the Rampart gateway CA.\n");
    pem.push_str("# Regenerate it after the system store or the Rampart CA changes.\n");
    let mut bundle = TrustBundle {
        pem: String::new(),
        system_roots: 0,
        rampart_certs: 0,
        duplicates: 0,
    };
    for cert in system {
        if seen.insert(cert.as_ref()) {
            pem.push_str(&der_to_pem(cert));
            bundle.system_roots += 1;
        } else {
            bundle.duplicates += 1;
        }
    }
    pem.push_str(&format!("# Rampart gateway CA: {}\n", ca.info().subject));
    for cert in ca.chain() {
        if seen.insert(cert.as_ref()) {
            pem.push_str(&der_to_pem(cert));
            bundle.rampart_certs += 1;
        } else {
            bundle.duplicates += 1;
        }
    }
    bundle.pem = pem;
    bundle
}

/// Writes the bundle (mode 0644: it holds only public certificates).
pub fn write_bundle(path: &Path, bundle: &TrustBundle) -> Result<(), TlsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TlsError::io(parent, e))?;
    }
    crate::ca::write_file(path, bundle.pem.as_bytes(), 0o644)
}

/// Which file a variable must point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustFile {
    /// The combined bundle: the tool replaces its roots with the file.
    Bundle,
    /// The Rampart CA alone: the tool adds it to its built-in roots.
    CaOnly,
}

/// One environment variable and the tool that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustVariable {
    pub name: &'static str,
    pub tools: &'static str,
    pub file: TrustFile,
}

/// Every variable `rampart trust env` prints. `GIT_SSL_CAINFO` (a file) is used rather
/// than `GIT_SSL_CAPATH`, which needs a hashed directory.
pub const TRUST_VARIABLES: &[TrustVariable] = &[
    TrustVariable {
        name: "SSL_CERT_FILE",
        tools: "OpenSSL-based tools, Ruby, Go, uv, rustls-native-certs",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "REQUESTS_CA_BUNDLE",
        tools: "Python requests",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "PIP_CERT",
        tools: "pip",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "CURL_CA_BUNDLE",
        tools: "curl",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "GIT_SSL_CAINFO",
        tools: "git",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "NODE_EXTRA_CA_CERTS",
        tools: "Node.js, npm",
        file: TrustFile::CaOnly,
    },
    TrustVariable {
        name: "CARGO_HTTP_CAINFO",
        tools: "cargo",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "AWS_CA_BUNDLE",
        tools: "AWS CLI and SDKs",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "DENO_CERT",
        tools: "Deno",
        file: TrustFile::CaOnly,
    },
    TrustVariable {
        name: "HTTPLIB2_CA_CERTS",
        tools: "httplib2 (gcloud)",
        file: TrustFile::Bundle,
    },
    TrustVariable {
        name: "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        tools: "gRPC",
        file: TrustFile::Bundle,
    },
];

/// Shell syntax for `rampart trust env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shell {
    #[default]
    Sh,
    Fish,
    Powershell,
}

impl std::str::FromStr for Shell {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sh" | "bash" | "zsh" => Ok(Shell::Sh),
            "fish" => Ok(Shell::Fish),
            "powershell" | "pwsh" => Ok(Shell::Powershell),
            other => Err(format!(
                "unknown shell {other:?} (use sh, fish or powershell)"
            )),
        }
    }
}

impl fmt::Display for Shell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shell::Sh => "sh",
            Shell::Fish => "fish",
            Shell::Powershell => "powershell",
        })
    }
}

/// Quotes `value` as one literal word for `shell`.
fn quote(shell: Shell, value: &str) -> String {
    match shell {
        // POSIX sh and fish: single quotes; an embedded quote closes, escapes and reopens.
        Shell::Sh => format!("'{}'", value.replace('\'', r"'\''")),
        Shell::Fish => format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'")),
        // PowerShell single-quoted strings double an embedded quote.
        Shell::Powershell => format!("'{}'", value.replace('\'', "''")),
    }
}

/// The script that points every tool at the bundle / CA file (absolute paths expected).
pub fn env_script(shell: Shell, bundle: &Path, ca: &Path) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Make developer tools trust the Rampart gateway CA. Apply with: {}\n",
        match shell {
            Shell::Sh => "eval \"$(rampart trust env)\"",
            Shell::Fish => "rampart trust env --shell fish | source",
            Shell::Powershell => "rampart trust env --shell powershell | Invoke-Expression",
        }
    ));
    for var in TRUST_VARIABLES {
        let path = match var.file {
            TrustFile::Bundle => bundle,
            TrustFile::CaOnly => ca,
        };
        let value = quote(shell, &path.to_string_lossy());
        let line = match shell {
            Shell::Sh => format!("export {}={value}", var.name),
            Shell::Fish => format!("set -gx {} {value}", var.name),
            Shell::Powershell => format!("$env:{} = {value}", var.name),
        };
        out.push_str(&format!("{line:<72} # {}\n", var.tools));
    }
    out
}

/// The script that reverts [`env_script`]: it removes every variable that script sets.
/// A value the variable had before `trust env` was applied is not restored (the
/// script cannot know it); apply this in the shell where `trust env` was applied.
pub fn unset_script(shell: Shell) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Stop pointing developer tools at the Rampart bundle. Apply with: {}\n",
        match shell {
            Shell::Sh => "eval \"$(rampart trust env --unset)\"",
            Shell::Fish => "rampart trust env --unset --shell fish | source",
            Shell::Powershell => "rampart trust env --unset --shell powershell | Invoke-Expression",
        }
    ));
    for var in TRUST_VARIABLES {
        let line = match shell {
            Shell::Sh => format!("unset {}", var.name),
            Shell::Fish => format!("set -e {}", var.name),
            Shell::Powershell => {
                format!("Remove-Item Env:{} -ErrorAction SilentlyContinue", var.name)
            }
        };
        out.push_str(&format!("{line:<72} # {}\n", var.tools));
    }
    out
}

/// Directory Debian's `update-ca-certificates` reads local CA certificates from.
pub const DEBIAN_LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";
/// Prefix of the files `rampart trust install` writes there; `--remove` deletes exactly these.
pub const INSTALLED_FILE_PREFIX: &str = "rampart-gateway-ca";

/// Writes each certificate of the CA chain to its own `DIR/rampart-gateway-ca[-N].crt`
/// (update-ca-certificates wants one certificate per file), replacing earlier ones.
pub fn install_ca_files(
    dir: &Path,
    chain: &[CertificateDer<'_>],
) -> Result<Vec<std::path::PathBuf>, TlsError> {
    remove_ca_files(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    let mut written = Vec::new();
    for (i, cert) in chain.iter().enumerate() {
        let name = if i == 0 {
            format!("{INSTALLED_FILE_PREFIX}.crt")
        } else {
            format!("{INSTALLED_FILE_PREFIX}-{i}.crt")
        };
        let path = dir.join(name);
        crate::ca::write_file(&path, der_to_pem(cert).as_bytes(), 0o644)?;
        written.push(path);
    }
    Ok(written)
}

/// Deletes the files [`install_ca_files`] wrote (and nothing else); returns them.
pub fn remove_ca_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, TlsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TlsError::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TlsError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(INSTALLED_FILE_PREFIX) && name.ends_with(".crt") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| TlsError::io(&path, e))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CaPaths};

    #[test]
    fn bundle_deduplicates_and_appends_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        let other = CertificateAuthority::create(
            &CaPaths::in_dir(&dir.path().join("o")),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        let system = vec![
            other.certificate_der().clone(),
            other.certificate_der().clone(),
            ca.certificate_der().clone(),
        ];
        let bundle = compose_bundle(&system, &ca);
        assert_eq!(bundle.system_roots, 2);
        assert_eq!(bundle.rampart_certs, 0);
        assert_eq!(bundle.duplicates, 2);
        assert_eq!(bundle.pem.matches("BEGIN CERTIFICATE").count(), 2);
        let fresh = compose_bundle(&system[..1], &ca);
        assert_eq!(fresh.rampart_certs, 1);
        assert!(fresh
            .pem
            .contains("# Rampart gateway CA: CN=Rampart Gateway CA"));
    }

    #[test]
    fn install_writes_one_file_per_certificate_and_remove_deletes_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(&dir.path().join("d")),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("corp.crt"), "keep me").unwrap();
        let written = install_ca_files(&store, ca.chain()).unwrap();
        assert_eq!(written, vec![store.join("rampart-gateway-ca.crt")]);
        assert_eq!(
            std::fs::read_to_string(&written[0]).unwrap(),
            ca.chain_pem()
        );
        assert_eq!(remove_ca_files(&store).unwrap(), written);
        assert!(store.join("corp.crt").exists());
        assert!(remove_ca_files(&store.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn sh_script_exports_every_variable_with_quoted_paths() {
        let s = env_script(
            Shell::Sh,
            Path::new("/tmp/it's/bundle.pem"),
            Path::new("/d/ca.pem"),
        );
        assert!(
            s.contains(r"export REQUESTS_CA_BUNDLE='/tmp/it'\''s/bundle.pem'"),
            "{s}"
        );
        assert!(s.contains("export NODE_EXTRA_CA_CERTS='/d/ca.pem'"), "{s}");
        assert!(!s.contains("GIT_SSL_CAPATH"));
        for var in TRUST_VARIABLES {
            assert!(s.contains(var.name), "{}", var.name);
        }
    }

    #[test]
    fn unset_script_removes_every_variable_env_script_sets() {
        let set = env_script(Shell::Sh, Path::new("/b.pem"), Path::new("/c.pem"));
        let unset = unset_script(Shell::Sh);
        for var in TRUST_VARIABLES {
            assert!(
                set.contains(&format!("export {}=", var.name)),
                "{}",
                var.name
            );
            assert!(unset.contains(&format!("unset {}", var.name)), "{unset}");
        }
        assert!(unset_script(Shell::Fish).contains("set -e PIP_CERT"));
        assert!(unset_script(Shell::Powershell)
            .contains("Remove-Item Env:NODE_EXTRA_CA_CERTS -ErrorAction SilentlyContinue"));
    }

    #[test]
    fn fish_and_powershell_use_their_own_syntax() {
        let f = env_script(Shell::Fish, Path::new("/b.pem"), Path::new("/c.pem"));
        assert!(f.contains("set -gx PIP_CERT '/b.pem'"), "{f}");
        let p = env_script(
            Shell::Powershell,
            Path::new("C:\\b.pem"),
            Path::new("C:\\c.pem"),
        );
        assert!(p.contains("$env:GIT_SSL_CAINFO = 'C:\\b.pem'"), "{p}");
        assert_eq!("pwsh".parse::<Shell>(), Ok(Shell::Powershell));
        assert!("tcsh".parse::<Shell>().is_err());
    }
}
