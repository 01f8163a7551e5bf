//! How the OCSF document is kept in the `doc` column.
//!
//! Rows written before the compact form hold the JSON text (SQLite type TEXT).
//! Newer rows hold a BLOB: one format byte, the JSON's length (u32, little
//! endian) and the JSON compressed as an LZ4 block against a fixed dictionary
//! of typical documents. Most of a document is key names and constants (class
//! names, product, connection info) that the dictionary already holds, so a
//! ~1.3 KB document shrinks ~4× for about a microsecond of CPU: fewer bytes to
//! write into the WAL, to checkpoint and to cache, which is what bounded the
//! writer. The API, the CLI and the sinks still see the same OCSF JSON.
//!
//! HTTP and network events (nearly all of them) are kept in a third form: one
//! format byte, then the flow record they are built from ([`FlowEvent`]) and
//! the writing product's version, in postcard's compact binary encoding (a few
//! hundred bytes, no JSON to render or compress). Reading builds the OCSF
//! event from it, the same event the data path would have rendered.

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::flow::FlowEvent;

/// Format byte of [`DICT_V1`] documents.
const FORMAT_LZ4_DICT_V1: u8 = 1;
/// Format byte of flow records ([`FlowDoc`] in postcard).
const FORMAT_FLOW_V1: u8 = 2;

/// The version the OCSF `metadata.product.version` of stored flow events names.
const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stored flow record. Fields are only ever added at the end, as `Option`s
/// read as absent from older rows; anything else needs a new format byte.
#[derive(Serialize)]
struct FlowDocRef<'a> {
    product_version: &'a str,
    flow: &'a FlowEvent,
}

#[derive(Deserialize)]
struct FlowDoc {
    product_version: String,
    flow: FlowEvent,
}

/// The dictionary: typical documents of every class, the most frequent
/// (HTTP Activity) last so its matches are the nearest. Rows reference it, so
/// it never changes: a better dictionary gets a new format byte.
const DICT_V1: &[u8] = include_bytes!("doc_dict_v1.json");

/// No document is this large; a larger length field means a damaged row,
/// refused before allocating for it.
const MAX_DOC_LEN: usize = 16 << 20;

/// Why a stored document could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("unknown document format {0}")]
    UnknownFormat(u8),
    #[error("truncated document")]
    Truncated,
    #[error("document length {0} out of range")]
    TooLong(usize),
    #[error("damaged compressed document: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    #[error("document is not UTF-8")]
    NotUtf8,
    #[error("doc column holds neither text nor a blob")]
    WrongType,
    #[error("damaged flow record: {0}")]
    Flow(#[from] postcard::Error),
    #[error("document is not an event: {0}")]
    Json(#[from] serde_json::Error),
}

/// The stored form of a flow event.
pub fn encode_flow(flow: &FlowEvent) -> Vec<u8> {
    encode_flow_into(flow, Vec::with_capacity(384))
}

/// [`encode_flow`], appended to `out`.
pub fn encode_flow_into(flow: &FlowEvent, mut out: Vec<u8>) -> Vec<u8> {
    let doc = FlowDocRef {
        product_version: PRODUCT_VERSION,
        flow,
    };
    let start = out.len();
    out.push(FORMAT_FLOW_V1);
    if postcard::serialize_with_flavor(&doc, Appender(&mut out)).is_err() {
        // Only a serializer bug could get here: keep the event, as JSON.
        out.truncate(start);
        let json = serde_json::to_string(&flow.event()).unwrap_or_default();
        out.extend_from_slice(&encode(&json));
    }
    out
}

/// Lets postcard append to a buffer it does not own, a slice at a time.
struct Appender<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The flow record in a stored form made by [`encode_flow`].
pub fn decode_flow(blob: &[u8]) -> Result<FlowEvent, DocError> {
    match blob.split_first() {
        Some((&FORMAT_FLOW_V1, body)) => Ok(postcard::from_bytes::<FlowDoc>(body)?.flow),
        Some((&other, _)) => Err(DocError::UnknownFormat(other)),
        None => Err(DocError::Truncated),
    }
}

/// The event in a `doc` column value (any form).
pub fn decode_event(value: ValueRef<'_>) -> Result<Event, DocError> {
    if let ValueRef::Blob(b) = value {
        if let Some((&FORMAT_FLOW_V1, body)) = b.split_first() {
            let doc: FlowDoc = postcard::from_bytes(body)?;
            let mut e = doc.flow.event();
            e.metadata.product.version = doc.product_version;
            return Ok(e);
        }
    }
    Ok(serde_json::from_str(&decode(value)?)?)
}

/// The stored form of one JSON document.
pub fn encode(json: &str) -> Vec<u8> {
    let input = json.as_bytes();
    let mut out = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(input.len())];
    out[0] = FORMAT_LZ4_DICT_V1;
    out[1..5].copy_from_slice(&(input.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into_with_dict(input, &mut out[5..], DICT_V1) {
        Ok(n) => out.truncate(5 + n),
        // Cannot happen with a buffer of the maximum output size; stay correct anyway.
        Err(_) => {
            out.truncate(5);
            out[0] = 0;
            out.extend_from_slice(input);
        }
    }
    out
}

/// The JSON text of a `doc` column value (either form).
pub fn decode(value: ValueRef<'_>) -> Result<String, DocError> {
    match value {
        ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| DocError::NotUtf8),
        ValueRef::Blob(b) => decode_blob(b),
        _ => Err(DocError::WrongType),
    }
}

fn decode_blob(b: &[u8]) -> Result<String, DocError> {
    let (&format, rest) = b.split_first().ok_or(DocError::Truncated)?;
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(DocError::Truncated)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_DOC_LEN {
        return Err(DocError::TooLong(len));
    }
    let body = &rest[4..];
    let bytes = match format {
        0 => body.to_vec(),
        FORMAT_LZ4_DICT_V1 => {
            let mut out = vec![0u8; len];
            let n = lz4_flex::block::decompress_into_with_dict(body, &mut out, DICT_V1)?;
            if n != len {
                return Err(DocError::Truncated);
            }
            out
        }
        other => return Err(DocError::UnknownFormat(other)),
    };
    String::from_utf8(bytes).map_err(|_| DocError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shrinks_a_typical_document() {
        let json = r#"{"class_uid":4002,"class_name":"HTTP Activity","category_uid":4,"category_name":"Network Activity","activity_id":3,"activity_name":"Get","type_uid":400203,"type_name":"HTTP Activity: Get","severity_id":1,"severity":"Informational","time":1763900000182,"metadata":{"uid":"019ab3c1-0000-7000-8000-00000000abcd","correlation_uid":"019ab3c1-0000-7000-8000-00000000f00d","version":"1.3.0","product":{"name":"Rampart","vendor_name":"Rampart","version":"0.1.0"},"log_provider":"gateway"},"action_id":1,"action":"Allowed","disposition_id":1,"disposition":"Allowed","actor":{"user":{"name":"carol"}},"src_endpoint":{"ip":"10.1.2.3","port":40000},"dst_endpoint":{"ip":"192.0.2.9","port":80,"hostname":"intranet.corp"},"http_request":{"http_method":"GET","url":{"url_string":"http://intranet.corp/wiki/Main","scheme":"http","hostname":"intranet.corp","path":"/wiki/Main"}},"http_response":{"code":200},"traffic":{"bytes_in":5120,"bytes_out":0,"bytes":5120},"unmapped":{"tls_decision":"plaintext"}}"#;
        let stored = encode(json);
        assert!(
            stored.len() * 3 < json.len(),
            "{} bytes stored for {}",
            stored.len(),
            json.len()
        );
        assert_eq!(decode(ValueRef::Blob(&stored)).unwrap(), json);
        assert_eq!(decode(ValueRef::Text(json.as_bytes())).unwrap(), json);
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let stored = encode(r#"{"a":"some text that is long enough to compress, compress"}"#);
        for cut in 0..stored.len() {
            let _ = decode(ValueRef::Blob(&stored[..cut]));
        }
        let mut huge = stored.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(ValueRef::Blob(&huge)),
            Err(DocError::TooLong(_))
        ));
        let mut unknown = stored;
        unknown[0] = 9;
        assert!(matches!(
            decode(ValueRef::Blob(&unknown)),
            Err(DocError::UnknownFormat(9))
        ));
    }

    /// Stored rows depend on these exact bytes: editing the dictionary would
    /// make every compressed document unreadable.
    #[test]
    fn dictionary_is_frozen() {
        let fnv = DICT_V1.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        assert_eq!((DICT_V1.len(), fnv), (6225, FROZEN_FNV));
    }

    const FROZEN_FNV: u64 = 0x3f3b_b7d3_75dd_6275;
}
