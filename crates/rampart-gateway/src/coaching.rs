//! Coaching for `user-alert` access rules: instead of the page, the user gets a
//! warning with a "Proceed" link; following it grants a short-lived allowance
//! for that user (or source address, without authentication) and host.
//!
//! The link is `http://HOST[:PORT]/.rampart/proceed?token=T`, requested through
//! the proxy like any page of that host, so the gateway answers it itself. The
//! token is signed with HMAC-SHA256 under a key drawn at process start (links
//! die with the process), binds the subject, the host and the URL to return
//! to, expires, and is accepted once. Allowances live beside the listener's
//! shared state, so a policy reload keeps them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rampart_policy::Identity;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Path the proceed link points to on the coached host.
pub const PROCEED_PATH: &str = "/.rampart/proceed";

/// Used tokens and allowances are pruned once a map grows beyond this.
const PRUNE_ABOVE: usize = 4096;

/// `[coaching]`: the proceed flow of `user-alert` rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoachingConfig {
    /// How long a user may visit the host after clicking "Proceed".
    #[serde(with = "humantime_serde")]
    pub allowance: Duration,
    /// How long a proceed link stays valid after the page was shown.
    #[serde(with = "humantime_serde")]
    pub link_lifetime: Duration,
}

impl Default for CoachingConfig {
    fn default() -> Self {
        CoachingConfig {
            allowance: Duration::from_secs(600),
            link_lifetime: Duration::from_secs(600),
        }
    }
}

/// Why a proceed link was refused (shown to the user; none reveals the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProceedError {
    #[error("the proceed link is malformed")]
    Malformed,
    #[error("the proceed link was not issued by this gateway")]
    BadSignature,
    #[error("the proceed link has expired; reload the page to get a new one")]
    Expired,
    #[error("the proceed link was issued to another user or address")]
    OtherSubject,
    #[error("the proceed link was issued for another host")]
    OtherHost,
    #[error("the proceed link was already used")]
    AlreadyUsed,
}

/// The signed content of a proceed link.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    /// Expiry, Unix seconds.
    exp: u64,
    /// Random, makes each link single-use.
    nonce: String,
    sub: String,
    host: String,
    /// Where the user goes after proceeding (the coached URL).
    url: String,
}

/// Process-wide coaching state: the signing key, used links and allowances.
pub struct Coaching {
    /// Replaceable: a fleet gateway takes the fleet's shared key from its
    /// configuration revision ([`Coaching::set_key`]) so that a link shown by
    /// one gateway is honoured by another.
    key: std::sync::RwLock<[u8; 32]>,
    used: Mutex<HashMap<String, u64>>,
    allowances: Mutex<HashMap<(String, String), Instant>>,
}

impl Coaching {
    /// A new state with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        Coaching::with_key(key)
    }

    fn with_key(key: [u8; 32]) -> Self {
        Coaching {
            key: std::sync::RwLock::new(key),
            used: Mutex::new(HashMap::new()),
            allowances: Mutex::new(HashMap::new()),
        }
    }

    /// Signs and checks links with `key` from now on (the fleet's shared
    /// coaching key). Links signed with the previous key stop working.
    pub fn set_key(&self, key: [u8; 32]) {
        match self.key.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }

    /// Signs a proceed token for `subject` on `host`, returning to `url`.
    pub fn issue(&self, subject: &str, host: &str, url: &str, lifetime: Duration) -> String {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let claims = Claims {
            exp: unix_now().saturating_add(lifetime.as_secs().max(1)),
            nonce: hex::encode(nonce),
            sub: subject.to_string(),
            host: normalize_host(host),
            url: url.to_string(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()));
        format!("{payload}.{tag}")
    }

    /// Checks `token` for `subject` on `host` and consumes it; on success
    /// grants the allowance and returns the URL to send the user back to.
    pub fn redeem(
        &self,
        token: &str,
        subject: &str,
        host: &str,
        allowance: Duration,
    ) -> Result<String, ProceedError> {
        let (payload, tag) = token.split_once('.').ok_or(ProceedError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| ProceedError::Malformed)?;
        let mut mac = self.keyed();
        mac.update(payload.as_bytes());
        // Constant-time comparison of the tag.
        mac.verify_slice(&tag)
            .map_err(|_| ProceedError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(ProceedError::Malformed)?;
        let now = unix_now();
        if claims.exp < now {
            return Err(ProceedError::Expired);
        }
        if claims.sub != subject {
            return Err(ProceedError::OtherSubject);
        }
        if claims.host != normalize_host(host) {
            return Err(ProceedError::OtherHost);
        }
        {
            let mut used = lock(&self.used);
            if used.len() > PRUNE_ABOVE {
                used.retain(|_, exp| *exp >= now);
            }
            if used.insert(claims.nonce.clone(), claims.exp).is_some() {
                return Err(ProceedError::AlreadyUsed);
            }
        }
        self.allow(subject, &claims.host, allowance);
        Ok(claims.url)
    }

    /// Grants `subject` the host for `ttl`.
    pub fn allow(&self, subject: &str, host: &str, ttl: Duration) {
        let now = Instant::now();
        let mut allowances = lock(&self.allowances);
        if allowances.len() > PRUNE_ABOVE {
            allowances.retain(|_, until| *until > now);
        }
        allowances.insert((subject.to_string(), normalize_host(host)), now + ttl);
    }

    /// Whether `subject` proceeded past the coaching page of `host` recently.
    pub fn allowed(&self, subject: &str, host: &str) -> bool {
        let key = (subject.to_string(), normalize_host(host));
        lock(&self.allowances)
            .get(&key)
            .is_some_and(|until| *until > Instant::now())
    }

    fn keyed(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length: this cannot fail.
        let key = *self.key.read().unwrap_or_else(|p| p.into_inner());
        match <Hmac<Sha256> as Mac>::new_from_slice(&key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = self.keyed();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

impl Default for Coaching {
    fn default() -> Self {
        Self::new()
    }
}

/// Who an allowance belongs to: the authenticated user, else the source address.
pub fn subject(identity: &Identity) -> String {
    match (&identity.user, &identity.source_ip) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_string(),
    }
}

/// `scheme://authority` of an absolute URL: where the proceed link must point
/// so the browser sends it through the same proxy path (plain or decrypted).
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(end) => &url[..after_scheme + end],
        None => url,
    }
}

/// The `token` parameter of a proceed link's query string.
pub fn token_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The coaching page: what the user is about to visit, why the policy warns,
/// and the link to proceed. 403, so tools do not mistake it for the content.
pub struct CoachingPage<'a> {
    pub rule: &'a str,
    pub category: Option<&'a str>,
    pub url: &'a str,
    pub event_id: &'a str,
    pub proceed_url: &'a str,
}

impl CoachingPage<'_> {
    /// (content type, body) for a request with this `Accept` value.
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        if rampart_tls::block_page::wants_html(accept) {
            ("text/html; charset=utf-8", self.html())
        } else {
            ("text/plain; charset=utf-8", self.text())
        }
    }

    fn facts(&self) -> Vec<(&'static str, &str)> {
        let mut facts = vec![("URL", self.url), ("Rule", self.rule)];
        if let Some(category) = self.category {
            facts.push(("Category", category));
        }
        facts.push(("Event ID", self.event_id));
        facts
    }

    fn reason(&self) -> String {
        format!(
            "The rule \"{}\" asks you to confirm before visiting this site. Your visit will be recorded.",
            self.rule
        )
    }

    pub fn text(&self) -> String {
        let mut out = format!("Caution: check before you continue\n{}\n\n", self.reason());
        rampart_tls::block_page::write_fact_lines(&mut out, &self.facts());
        let _ = writeln!(
            out,
            "\nTo proceed anyway, open this link (through the proxy) within its lifetime:\nProceed: {}",
            self.proceed_url
        );
        out
    }

    pub fn html(&self) -> String {
        use rampart_tls::block_page::escape_html;
        let rows = rampart_tls::block_page::fact_rows_html(&self.facts());
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<title>Caution</title><style>\
body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.4rem;color:#8a5a00}}th{{text-align:left;padding-right:1rem;vertical-align:top}}\
td{{word-break:break-all}}a.proceed{{display:inline-block;margin-top:1.5rem;padding:.5rem 1rem;\
border:1px solid #8a5a00;border-radius:4px;color:#8a5a00;text-decoration:none}}\
footer{{margin-top:2rem;font-size:.85rem;color:#666}}\
</style></head><body><h1>Caution: check before you continue</h1><p>{reason}</p><table>{rows}</table>\
<a class=\"proceed\" href=\"{proceed}\">Proceed</a>\
<footer>Quote the event ID when asking your administrator about this. — Rampart</footer></body></html>\n",
            reason = escape_html(&self.reason()),
            proceed = escape_html(self.proceed_url),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MIN: Duration = Duration::from_secs(600);

    #[test]
    fn a_token_is_redeemed_once_and_grants_the_host() {
        let c = Coaching::new();
        let t = c.issue(
            "user:alice",
            "Video.Example.",
            "http://video.example/x",
            TEN_MIN,
        );
        assert!(!c.allowed("user:alice", "video.example"));
        assert_eq!(
            c.redeem(&t, "user:alice", "video.example", TEN_MIN)
                .as_deref(),
            Ok("http://video.example/x")
        );
        assert!(c.allowed("user:alice", "VIDEO.example"));
        assert!(!c.allowed("user:bob", "video.example"));
        assert!(!c.allowed("user:alice", "other.example"));
        assert_eq!(
            c.redeem(&t, "user:alice", "video.example", TEN_MIN),
            Err(ProceedError::AlreadyUsed)
        );
    }

    #[test]
    fn gateways_sharing_a_key_honour_each_others_tokens() {
        // A fleet: the revision's key set on two gateways' states.
        let (a, b, other) = (Coaching::new(), Coaching::new(), Coaching::new());
        a.set_key([7; 32]);
        b.set_key([7; 32]);
        let t = a.issue("ip:10.0.0.1", "a.example", "http://a.example/", TEN_MIN);
        assert_eq!(
            other.redeem(&t, "ip:10.0.0.1", "a.example", TEN_MIN),
            Err(ProceedError::BadSignature)
        );
        assert!(b.redeem(&t, "ip:10.0.0.1", "a.example", TEN_MIN).is_ok());
        assert!(b.allowed("ip:10.0.0.1", "a.example"));
    }

    #[test]
    fn a_token_is_bound_to_subject_and_host() {
        let c = Coaching::new();
        let t = c.issue("ip:10.0.0.1", "a.example", "http://a.example/", TEN_MIN);
        assert_eq!(
            c.redeem(&t, "ip:10.0.0.2", "a.example", TEN_MIN),
            Err(ProceedError::OtherSubject)
        );
        assert_eq!(
            c.redeem(&t, "ip:10.0.0.1", "b.example", TEN_MIN),
            Err(ProceedError::OtherHost)
        );
        // The refusals did not consume it.
        assert!(c.redeem(&t, "ip:10.0.0.1", "a.example", TEN_MIN).is_ok());
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let c = Coaching::new();
        let t = c.issue("user:alice", "a.example", "http://a.example/", TEN_MIN);
        let (payload, tag) = t.split_once('.').unwrap();
        // Another subject in the payload, the old tag: signature fails.
        let forged_claims = Claims {
            exp: unix_now() + 600,
            nonce: "00".into(),
            sub: "user:mallory".into(),
            host: "a.example".into(),
            url: "http://a.example/".into(),
        };
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        assert_eq!(
            c.redeem(&forged, "user:mallory", "a.example", TEN_MIN),
            Err(ProceedError::BadSignature)
        );
        // A token of another gateway process (another key).
        let other = Coaching::with_key([7; 32]);
        let foreign = other.issue("user:alice", "a.example", "http://a.example/", TEN_MIN);
        assert_eq!(
            c.redeem(&foreign, "user:alice", "a.example", TEN_MIN),
            Err(ProceedError::BadSignature)
        );
        assert_eq!(
            c.redeem("garbage", "user:alice", "a.example", TEN_MIN),
            Err(ProceedError::Malformed)
        );
        assert_eq!(
            c.redeem(&format!("{payload}.!!"), "user:alice", "a.example", TEN_MIN),
            Err(ProceedError::Malformed)
        );
    }

    #[test]
    fn an_expired_token_is_refused_and_allowances_end() {
        let c = Coaching::new();
        let claims = Claims {
            exp: unix_now() - 1,
            nonce: "n".into(),
            sub: "user:alice".into(),
            host: "a.example".into(),
            url: "http://a.example/".into(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let token = format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(c.mac(payload.as_bytes()))
        );
        assert_eq!(
            c.redeem(&token, "user:alice", "a.example", TEN_MIN),
            Err(ProceedError::Expired)
        );
        c.allow("user:alice", "a.example", Duration::ZERO);
        assert!(!c.allowed("user:alice", "a.example"));
    }

    #[test]
    fn origin_is_scheme_and_authority() {
        assert_eq!(
            origin_of("https://a.example:8443/x?y"),
            "https://a.example:8443"
        );
        assert_eq!(origin_of("http://[::1]:80/"), "http://[::1]:80");
        assert_eq!(origin_of("http://a.example"), "http://a.example");
    }

    #[test]
    fn token_parameter_is_found_in_the_query() {
        assert_eq!(token_of(Some("a=1&token=abc.def")), Some("abc.def"));
        assert_eq!(token_of(Some("token=")), None);
        assert_eq!(token_of(None), None);
    }

    #[test]
    fn page_escapes_values_and_offers_the_proceed_link() {
        let page = CoachingPage {
            rule: "video <warn>",
            category: Some("streaming"),
            url: "http://v.example/?q=<script>",
            event_id: "ev-1",
            proceed_url: "http://v.example/.rampart/proceed?token=a.b",
        };
        let (ctype, html) = page.render(Some("text/html"));
        assert!(ctype.starts_with("text/html"));
        assert!(html.contains("href=\"http://v.example/.rampart/proceed?token=a.b\""));
        assert!(!html.contains("<script>") && html.contains("video &lt;warn&gt;"));
        let (ctype, text) = page.render(None);
        assert!(ctype.starts_with("text/plain"));
        assert!(text.contains("Proceed: http://v.example/.rampart/proceed?token=a.b"));
        assert!(text.contains("Category: streaming"));
    }
}
