//! The decisions a flow records, as types: what a policy rule did
//! ([`PolicyAction`]), what TLS interception did ([`TlsDecision`]) and the
//! objects a rule matched (the policy's own [`MatchedObject`]s). They stay
//! typed through every phase and become text only where the access line and
//! the event are written, so nothing is formatted and parsed back per request.

use std::fmt;

use rampart_policy::{AccessAction, DecryptionAction, MatchedObject, ObjectKind, Stage};
use serde::{Serialize, Serializer};

/// What the deciding rule of a [`crate::access_log::PolicyRecord`] did: an
/// access or decryption action, or access left undecided until a later phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    Access(AccessAction),
    Decryption(DecryptionAction),
    /// Access waits for the URL: a rule before any that could decide needs it.
    PendingUrl,
    /// Access waits for the response (file type, inspection verdicts).
    PendingResponse,
}

impl PolicyAction {
    /// The spelling in the access log and on events (`block`, `do-not-decrypt`, `pending-url`...).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Access(action) => action.as_str(),
            PolicyAction::Decryption(action) => action.as_str(),
            PolicyAction::PendingUrl => "pending-url",
            PolicyAction::PendingResponse => "pending-response",
        }
    }

    /// An `alert` or `user-alert` rule: the flow raises a Detection Finding.
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            PolicyAction::Access(AccessAction::Alert | AccessAction::UserAlert)
        )
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PolicyAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the gateway did with a TLS connection (a CONNECT tunnel to a TLS port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsDecision {
    /// Intercepted: Rampart's leaf to the client, its requests seen in clear.
    Decrypt,
    /// Spliced without interception (a rule, a configured host, a pinned app, an agent's bypass).
    DoNotDecrypt,
    /// The client sent no TLS on a TLS port.
    NotTls,
    /// The ClientHello named another site than the CONNECT (domain fronting).
    Fronting,
}

impl TlsDecision {
    /// The spelling in the access log (`decrypt`, `do-not-decrypt`, `not-tls`, `fronting`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsDecision::Decrypt => "decrypt",
            TlsDecision::DoNotDecrypt => "do-not-decrypt",
            TlsDecision::NotTls => "not-tls",
            TlsDecision::Fronting => "fronting",
        }
    }
}

impl fmt::Display for TlsDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TlsDecision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The categories (built-in and custom) among a rule's matched objects.
pub fn categories(matched: &[MatchedObject]) -> impl Iterator<Item = &MatchedObject> {
    matched
        .iter()
        .filter(|m| matches!(m.kind, ObjectKind::Category | ObjectKind::CustomCategory))
}

/// A stage as its name (`access`, `decryption`), for `#[serde(serialize_with)]`.
pub(crate) fn serialize_stage<S: Serializer>(stage: &Stage, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(stage.as_str())
}

/// A value as its `Display` text, for `#[serde(serialize_with)]`: an
/// inspection verdict with its reason (`unscannable: too-large`), a direction.
pub(crate) fn serialize_as_text<T: fmt::Display, S: Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Matched objects as their text (`category news`), for `#[serde(serialize_with)]`.
pub(crate) fn serialize_matched<S: Serializer>(
    matched: &[MatchedObject],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(matched.iter().map(AsText))
}

/// Serializes a value as its `Display` text.
struct AsText<'a, T>(&'a T);

impl<T: fmt::Display> Serialize for AsText<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings are the access log's and the events' field values: they
    /// must stay what the policy and the docs (tls.md, events.md) say.
    #[test]
    fn actions_and_decisions_keep_their_spellings() {
        let actions = [
            (PolicyAction::Access(AccessAction::Allow), "allow"),
            (PolicyAction::Access(AccessAction::Block), "block"),
            (PolicyAction::Access(AccessAction::Alert), "alert"),
            (PolicyAction::Access(AccessAction::UserAlert), "user-alert"),
            (
                PolicyAction::Decryption(DecryptionAction::Decrypt),
                "decrypt",
            ),
            (
                PolicyAction::Decryption(DecryptionAction::DoNotDecrypt),
                "do-not-decrypt",
            ),
            (PolicyAction::PendingUrl, "pending-url"),
            (PolicyAction::PendingResponse, "pending-response"),
        ];
        for (action, text) in actions {
            assert_eq!(action.to_string(), text);
            assert_eq!(serde_json::to_value(action).unwrap(), text);
        }
        let decisions = [
            (TlsDecision::Decrypt, "decrypt"),
            (TlsDecision::DoNotDecrypt, "do-not-decrypt"),
            (TlsDecision::NotTls, "not-tls"),
            (TlsDecision::Fronting, "fronting"),
        ];
        for (decision, text) in decisions {
            assert_eq!(serde_json::to_value(decision).unwrap(), text);
        }
    }
}
