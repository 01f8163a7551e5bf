//! `rampart trust install --java | --nss`: the trust stores that keep their own list of
//! roots and are changed only through their own tools — a Java keystore (`keytool`)
//! and NSS databases (`certutil`, what Chromium and Firefox read on Linux). Each entry
//! Rampart adds is named `rampart-gateway-ca[-N]`, so `--remove` deletes exactly those.
use anyhow::{bail, Context};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rampart_tls::trust::INSTALLED_FILE_PREFIX;

/// Name of the entry for certificate `index` of the CA chain (0 = the signing CA).
fn entry_name(index: usize) -> String {
    if index == 0 {
        INSTALLED_FILE_PREFIX.to_string()
    } else {
        format!("{INSTALLED_FILE_PREFIX}-{index}")
    }
}

/// Whether `name` is one of the names [`entry_name`] gives (keytool lowercases aliases;
/// ours already are).
fn is_rampart_entry(name: &str) -> bool {
    match name.strip_prefix(INSTALLED_FILE_PREFIX) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Runs a store tool with `input` on its standard input (the certificate, DER), or
/// none (a password prompt then fails instead of hanging).
fn run_tool(
    command: &mut Command,
    input: Option<&[u8]>,
    what: &str,
    install_hint: &str,
) -> anyhow::Result<Output> {
    use std::io::Write;
    let context = || format!("running {what} ({install_hint})");
    let Some(input) = input else {
        return command.stdin(Stdio::null()).output().with_context(context);
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(context)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A tool that exits early closes the pipe; its output then says why.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().with_context(context)
}

fn tool_failure(what: &str, output: &Output) -> anyhow::Error {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    anyhow::anyhow!("{what} failed ({}): {}", output.status, text.trim())
}

// ---------------------------------------------------------------------------------
// Java keystores
// ---------------------------------------------------------------------------------

/// The environment variable keytool reads the store password from (`-storepass:env`),
/// so the password never appears in the process list.
const STOREPASS_VAR: &str = "RAMPART_KEYTOOL_STOREPASS";

const KEYTOOL_HINT: &str = "a JDK or JRE provides keytool: apt-get install default-jre-headless";

/// A Java keystore and the keytool that edits it.
pub struct JavaKeystore {
    keytool: PathBuf,
    /// `None`: the JDK's own `cacerts` (`keytool -cacerts`).
    keystore: Option<PathBuf>,
    storepass: String,
}

impl JavaKeystore {
    /// `keytool` from `$JAVA_HOME/bin`, else from `PATH`; fails with the package to
    /// install when there is none.
    pub fn new(
        keytool: Option<PathBuf>,
        keystore: Option<PathBuf>,
        storepass: String,
    ) -> anyhow::Result<Self> {
        let keytool = match keytool {
            Some(path) => path,
            None => find_keytool().context(
                "no keytool found (no JDK or JRE): install one (Debian/Ubuntu: \
                 apt-get install default-jre-headless), set JAVA_HOME, or pass --keytool PATH",
            )?,
        };
        if let Some(path) = &keystore {
            if !path.is_file() {
                bail!(
                    "{}: no such Java keystore (name an existing keystore file, or omit \
                     --java-keystore for the JDK's cacerts)",
                    path.display()
                );
            }
        }
        Ok(JavaKeystore {
            keytool,
            keystore,
            storepass,
        })
    }

    /// What to call the keystore in messages.
    pub fn describe(&self) -> String {
        match &self.keystore {
            Some(path) => path.display().to_string(),
            None => match jdk_cacerts(&self.keytool) {
                Some(path) => format!("{} (the JDK's cacerts)", path.display()),
                None => "the JDK's cacerts".to_string(),
            },
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.keytool);
        command.env(STOREPASS_VAR, &self.storepass);
        command
    }

    fn store_args(&self, command: &mut Command) {
        match &self.keystore {
            Some(path) => command.arg("-keystore").arg(path),
            None => command.arg("-cacerts"),
        };
        command.args(["-storepass:env", STOREPASS_VAR]);
    }

    /// The aliases in the keystore.
    pub fn aliases(&self) -> anyhow::Result<Vec<String>> {
        let mut command = self.command();
        command.arg("-list");
        self.store_args(&mut command);
        let output = run_tool(&mut command, None, "keytool -list", KEYTOOL_HINT)?;
        if !output.status.success() {
            return Err(tool_failure(
                &format!("keytool -list on {}", self.describe()),
                &output,
            ));
        }
        // Entry lines read `alias, date, entryType,` and the next line the fingerprint.
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim_end)
            .filter(|l| {
                l.ends_with("trustedCertEntry,")
                    || l.ends_with("PrivateKeyEntry,")
                    || l.ends_with("SecretKeyEntry,")
            })
            .filter_map(|l| l.split(", ").next())
            .map(str::to_string)
            .collect())
    }

    /// Adds the chain as trusted certificates (replacing an earlier install); returns
    /// the aliases written.
    pub fn install(&self, chain: &[CertificateDer<'_>]) -> anyhow::Result<Vec<String>> {
        self.remove()?;
        let mut added = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            let alias = entry_name(i);
            let mut command = self.command();
            // No -file: keytool reads the certificate from standard input.
            command.args([
                "-importcert",
                "-noprompt",
                "-trustcacerts",
                "-alias",
                &alias,
            ]);
            self.store_args(&mut command);
            let output = run_tool(
                &mut command,
                Some(cert.as_ref()),
                "keytool -importcert",
                KEYTOOL_HINT,
            )?;
            if !output.status.success() {
                return Err(tool_failure(
                    &format!("adding {alias} to {}", self.describe()),
                    &output,
                ));
            }
            added.push(alias);
        }
        Ok(added)
    }

    /// Deletes the entries [`JavaKeystore::install`] adds (and nothing else).
    pub fn remove(&self) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for alias in self.aliases()?.into_iter().filter(|a| is_rampart_entry(a)) {
            let mut command = self.command();
            command.args(["-delete", "-alias", &alias]);
            self.store_args(&mut command);
            let output = run_tool(&mut command, None, "keytool -delete", KEYTOOL_HINT)?;
            if !output.status.success() {
                return Err(tool_failure(
                    &format!("removing {alias} from {}", self.describe()),
                    &output,
                ));
            }
            removed.push(alias);
        }
        Ok(removed)
    }
}

/// `$JAVA_HOME/bin/keytool`, else the first `keytool` on `PATH`.
fn find_keytool() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let path = Path::new(&home).join("bin").join("keytool");
        if path.is_file() {
            return Some(path);
        }
    }
    find_on_path("keytool")
}

/// The `cacerts` file a JDK's `keytool -cacerts` edits: `<java home>/lib/security/cacerts`
/// (Debian links it to /etc/ssl/certs/java/cacerts).
fn jdk_cacerts(keytool: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(keytool).ok()?;
    let home = real.parent()?.parent()?;
    let cacerts = home.join("lib").join("security").join("cacerts");
    Some(std::fs::canonicalize(&cacerts).unwrap_or(cacerts))
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

// ---------------------------------------------------------------------------------
// NSS databases
// ---------------------------------------------------------------------------------

/// Trust flags for the CA: a trusted issuer of TLS server certificates (`C`), nothing
/// for e-mail or code signing.
const NSS_TRUST: &str = "C,,";

/// An NSS database in SQL format (`cert9.db`, `key4.db`, `pkcs11.txt`) and the certutil
/// that edits it.
pub struct NssDatabase {
    pub dir: PathBuf,
    certutil: PathBuf,
}

/// One line of `certutil -L`: a nickname and its trust flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NssEntry {
    pub nickname: String,
    pub trust: String,
}

impl NssDatabase {
    /// `dir` must hold an SQL database, or not exist yet when `create` (it is then
    /// created without a password, as Chromium creates `~/.pki/nssdb`).
    pub fn open(dir: PathBuf, certutil: &Path, create: bool) -> anyhow::Result<Self> {
        let db = NssDatabase {
            dir,
            certutil: certutil.to_path_buf(),
        };
        if db.dir.join("cert9.db").is_file() {
            return Ok(db);
        }
        if db.dir.join("cert8.db").is_file() {
            bail!(
                "{}: an old-format NSS database (cert8.db); Rampart changes only SQL \
                 databases (cert9.db): open it once with a current Firefox to convert it",
                db.dir.display()
            );
        }
        if !create {
            bail!("{}: no NSS database (cert9.db) here", db.dir.display());
        }
        std::fs::create_dir_all(&db.dir)
            .with_context(|| format!("creating {}", db.dir.display()))?;
        let mut command = Command::new(&db.certutil);
        command
            .args(["-N", "--empty-password", "-d"])
            .arg(db.spec());
        let output = run_tool(&mut command, None, "certutil -N", CERTUTIL_HINT)?;
        if !output.status.success() {
            return Err(tool_failure(
                &format!("creating an NSS database in {}", db.dir.display()),
                &output,
            ));
        }
        Ok(db)
    }

    /// `sql:DIR`, as certutil names an SQL database.
    fn spec(&self) -> String {
        format!("sql:{}", self.dir.display())
    }

    /// Every certificate in the database with its trust flags, as `certutil -L` lists them.
    pub fn entries(&self) -> anyhow::Result<Vec<NssEntry>> {
        let mut command = Command::new(&self.certutil);
        command.arg("-L").arg("-d").arg(self.spec());
        let output = run_tool(&mut command, None, "certutil -L", CERTUTIL_HINT)?;
        if !output.status.success() {
            return Err(tool_failure(
                &format!("listing {}", self.dir.display()),
                &output,
            ));
        }
        Ok(parse_certutil_list(&String::from_utf8_lossy(
            &output.stdout,
        )))
    }

    /// Adds the chain, trusted to issue server certificates (replacing an earlier
    /// install); returns the nicknames written.
    pub fn install(&self, chain: &[CertificateDer<'_>]) -> anyhow::Result<Vec<String>> {
        self.remove()?;
        let mut added = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            let nickname = entry_name(i);
            let mut command = Command::new(&self.certutil);
            // No -i: certutil reads the certificate (DER) from standard input.
            command
                .args(["-A", "-n", &nickname, "-t", NSS_TRUST, "-d"])
                .arg(self.spec());
            let output = run_tool(
                &mut command,
                Some(cert.as_ref()),
                "certutil -A",
                CERTUTIL_HINT,
            )?;
            if !output.status.success() {
                return Err(tool_failure(
                    &format!("adding {nickname} to {}", self.dir.display()),
                    &output,
                ));
            }
            added.push(nickname);
        }
        // A certificate NSS already held under another nickname keeps that nickname:
        // say so rather than report an entry `--remove` could not find.
        let entries = self.entries()?;
        for nickname in &added {
            if !entries.iter().any(|e| &e.nickname == nickname) {
                bail!(
                    "{}: the Rampart CA was already in this database under another \
                     nickname (see `certutil -L -d {}`); its trust flags are now {NSS_TRUST}",
                    self.dir.display(),
                    self.spec()
                );
            }
        }
        Ok(added)
    }

    /// Deletes the certificates [`NssDatabase::install`] adds (and nothing else).
    pub fn remove(&self) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in self.entries()? {
            if !is_rampart_entry(&entry.nickname) {
                continue;
            }
            let mut command = Command::new(&self.certutil);
            command
                .args(["-D", "-n", &entry.nickname, "-d"])
                .arg(self.spec());
            let output = run_tool(&mut command, None, "certutil -D", CERTUTIL_HINT)?;
            if !output.status.success() {
                return Err(tool_failure(
                    &format!("removing {} from {}", entry.nickname, self.dir.display()),
                    &output,
                ));
            }
            removed.push(entry.nickname);
        }
        Ok(removed)
    }
}

const CERTUTIL_HINT: &str = "Debian/Ubuntu: apt-get install libnss3-tools";

/// `certutil` on `PATH`, or the package to install.
pub fn find_certutil() -> anyhow::Result<PathBuf> {
    find_on_path("certutil").with_context(|| format!("no certutil found ({CERTUTIL_HINT})"))
}

/// `certutil -L` prints a header, then one line per certificate: the nickname (which
/// may contain spaces) padded to a column, then the trust flags `SSL,S/MIME,JAR/XPI`.
fn parse_certutil_list(text: &str) -> Vec<NssEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end();
            let (nickname, trust) = line.rsplit_once(char::is_whitespace)?;
            let nickname = nickname.trim_end();
            (trust.matches(',').count() == 2 && !nickname.is_empty()).then(|| NssEntry {
                nickname: nickname.to_string(),
                trust: trust.to_string(),
            })
        })
        .collect()
}

/// The NSS databases of the user's browsers on Linux: Chromium's and Chrome's shared
/// `~/.pki/nssdb` (also the snap's) and every Firefox profile (deb, snap, flatpak)
/// that has an SQL database.
pub fn browser_databases(home: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for shared in [".pki/nssdb", "snap/chromium/current/.pki/nssdb"] {
        let dir = home.join(shared);
        if dir.join("cert9.db").is_file() {
            found.push(dir);
        }
    }
    for profiles in [
        ".mozilla/firefox",
        "snap/firefox/common/.mozilla/firefox",
        ".var/app/org.mozilla.firefox/.mozilla/firefox",
    ] {
        let Ok(entries) = std::fs::read_dir(home.join(profiles)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("cert9.db").is_file())
            .collect();
        dirs.sort();
        found.extend(dirs);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_rampart_gives_are_its_entries() {
        assert!(is_rampart_entry("rampart-gateway-ca"));
        assert!(is_rampart_entry("rampart-gateway-ca-2"));
        assert!(!is_rampart_entry("rampart-gateway-ca-old"));
        assert!(!is_rampart_entry("rampart-gateway-ca-"));
        assert!(!is_rampart_entry("corp root"));
        assert_eq!(entry_name(0), "rampart-gateway-ca");
        assert_eq!(entry_name(1), "rampart-gateway-ca-1");
    }

    #[test]
    fn certutil_listing_is_parsed_with_nicknames_that_contain_spaces() {
        let text = "\nCertificate Nickname                                         Trust Attributes\n\
                    \x20                                                            SSL,S/MIME,JAR/XPI\n\n\
                    Example Corp Root CA                                         CT,C,C\n\
                    rampart-gateway-ca                                           C,,  \n";
        assert_eq!(
            parse_certutil_list(text),
            vec![
                NssEntry {
                    nickname: "Example Corp Root CA".into(),
                    trust: "CT,C,C".into()
                },
                NssEntry {
                    nickname: "rampart-gateway-ca".into(),
                    trust: "C,,".into()
                },
            ]
        );
    }
}
