//! Server-side sessions (the cookie holds only a random id), the per-session
//! CSRF token and login rate limiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use super::users::Role;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rampart_session";
/// Name of the login form's double-submit cookie (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "rampart_login_csrf";

/// 32 random bytes, URL-safe base64: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a request learns from its session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    expires: Instant,
}

/// Live sessions, in memory: a restart logs everyone out, which is the safe side.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new session; returns its id (for the cookie).
    pub fn create(&self, user: &str, role: Role) -> String {
        let id = random_token();
        let session = Session {
            user: user.to_string(),
            role,
            csrf: random_token(),
            expires: Instant::now() + self.ttl,
        };
        if let Ok(mut map) = self.map.lock() {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            map.insert(id.clone(), session);
        }
        id
    }

    /// The session of this id, unless it expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// Failed logins per key (`src:IP`, `user:NAME`) within a sliding window.
pub struct LoginLimiter {
    window: Duration,
    per_source: usize,
    per_user: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(window: Duration, per_source: usize, per_user: usize) -> LoginLimiter {
        LoginLimiter {
            window,
            per_source,
            per_user,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait when this source or user has failed too often lately.
    pub fn blocked(&self, source: &str, user: &str) -> Option<u64> {
        let mut map = self.failures.lock().ok()?;
        let now = Instant::now();
        let mut wait = None;
        for (key, max) in [
            (format!("src:{source}"), self.per_source),
            (format!("user:{user}"), self.per_user),
        ] {
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= max {
                    let oldest = q.front().copied().unwrap_or(now);
                    let left = self.window.saturating_sub(now.duration_since(oldest));
                    wait = Some(wait.unwrap_or(0).max(left.as_secs().max(1)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, source: &str, user: &str) {
        if let Ok(mut map) = self.failures.lock() {
            let now = Instant::now();
            for key in [format!("src:{source}"), format!("user:{user}")] {
                map.entry(key).or_default().push_back(now);
            }
            // Bound memory under a spray of names: forget idle keys.
            if map.len() > 10_000 {
                let window = self.window;
                map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_the_per_user_limit_and_not_other_users() {
        let l = LoginLimiter::new(Duration::from_secs(60), 100, 3);
        for _ in 0..3 {
            assert!(l.blocked("10.0.0.1", "alice").is_none());
            l.failed("10.0.0.1", "alice");
        }
        assert!(l.blocked("10.0.0.2", "alice").is_some());
        assert!(l.blocked("10.0.0.1", "bob").is_none());
    }

    #[test]
    fn expired_session_is_gone() {
        let s = Sessions::new(Duration::from_millis(0));
        let id = s.create("alice", Role::Admin);
        assert!(s.get(&id).is_none());
    }
}
