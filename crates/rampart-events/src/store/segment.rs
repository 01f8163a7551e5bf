//! Segments: the unit events are stored in.
//!
//! A segment holds up to [`SEGMENT_EVENTS`] events with consecutive seqs, all
//! from one insert (one commit of the writer). One SQLite row per event, with
//! its query columns and the id and time indexes, cost the writer ~7.7 µs an
//! event and ~700 bytes of database; a segment costs two rows per 256
//! events and its records compress together (most of a flow record repeats
//! its neighbours: users, hosts, rules, the product version).
//!
//! Each event keeps its stored form (`doc.rs`: a flow record, or compressed
//! OCSF JSON). A segment's `data` is one LZ4 block over
//!
//! ```text
//! u8 format (1)
//! count            varint
//! count × length   varint, the length of each stored form, in seq order
//! the stored forms, concatenated
//! ```
//!
//! prefixed by the uncompressed length (u32 little endian). Its `ids` are the
//! events' 16-byte ids in seq order, uncompressed, so the writer can refuse
//! duplicates and readers can find an id without decompressing anything.

use uuid::Uuid;

use super::varint;

/// Events per segment at most. A read decompresses a whole segment, and LZ4
/// finds repeats only within 64 KiB: ~256 flow records fill that window.
pub const SEGMENT_EVENTS: usize = 256;

const FORMAT_V1: u8 = 1;

/// No segment is this large uncompressed; a larger length means a damaged row.
const MAX_SEGMENT_LEN: usize = 256 << 20;

/// A segment that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("unknown segment format {0}")]
    UnknownFormat(u8),
    #[error("truncated segment")]
    Truncated,
    #[error("segment length {0} out of range")]
    TooLong(usize),
    #[error("damaged compressed segment")]
    Lz4,
    #[error("segment holds {found} events, its row says {expected}")]
    Count { expected: usize, found: usize },
}

/// Collects the events of one segment. Its buffers are kept from one
/// segment to the next: the writer builds thousands a minute, and
/// reallocating ~64 KiB buffers each time kept glibc's allocator busy.
#[derive(Default)]
pub struct SegmentBuilder {
    lengths: Vec<u8>,
    bodies: Vec<u8>,
    ids: Vec<u8>,
    ids_out: Vec<u8>,
    plain: Vec<u8>,
    compressed: Vec<u8>,
    count: usize,
    min_time: i64,
    max_time: i64,
    min_id: [u8; 16],
    max_id: [u8; 16],
}

/// A built segment, ready for its two rows; borrows the builder's buffers.
pub struct EncodedSegment<'a> {
    pub count: usize,
    pub min_time: i64,
    pub max_time: i64,
    pub min_id: [u8; 16],
    pub max_id: [u8; 16],
    pub ids: &'a [u8],
    pub data: &'a [u8],
}

impl SegmentBuilder {
    pub fn is_full(&self) -> bool {
        self.count >= SEGMENT_EVENTS
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Append the event with this id, time and stored form.
    pub fn push(&mut self, id: Uuid, time: i64, stored: &[u8]) {
        let id = *id.as_bytes();
        if self.count == 0 {
            self.min_time = time;
            self.max_time = time;
            self.min_id = id;
            self.max_id = id;
        } else {
            self.min_time = self.min_time.min(time);
            self.max_time = self.max_time.max(time);
            self.min_id = self.min_id.min(id);
            self.max_id = self.max_id.max(id);
        }
        self.count += 1;
        varint::put(&mut self.lengths, stored.len() as u64);
        self.bodies.extend_from_slice(stored);
        self.ids.extend_from_slice(&id);
    }

    /// The segment's rows. The next [`SegmentBuilder::push`] starts a new segment.
    pub fn finish(&mut self) -> EncodedSegment<'_> {
        self.plain.clear();
        self.plain.push(FORMAT_V1);
        varint::put(&mut self.plain, self.count as u64);
        self.plain.extend_from_slice(&self.lengths);
        self.plain.extend_from_slice(&self.bodies);
        let len = self.plain.len();
        self.compressed.clear();
        self.compressed
            .resize(4 + lz4_flex::block::get_maximum_output_size(len), 0);
        self.compressed[..4].copy_from_slice(&(len as u32).to_le_bytes());
        // Cannot fail with a buffer of the maximum output size; stay correct anyway.
        let n = lz4_flex::block::compress_into(&self.plain, &mut self.compressed[4..])
            .unwrap_or_else(|_| {
                self.compressed = lz4_flex::block::compress_prepend_size(&self.plain);
                self.compressed.len() - 4
            });
        self.compressed.truncate(4 + n);
        let count = std::mem::take(&mut self.count);
        self.lengths.clear();
        self.bodies.clear();
        // The ids go out from the second buffer; the first starts empty again.
        std::mem::swap(&mut self.ids, &mut self.ids_out);
        self.ids.clear();
        EncodedSegment {
            count,
            min_time: self.min_time,
            max_time: self.max_time,
            min_id: self.min_id,
            max_id: self.max_id,
            ids: &self.ids_out,
            data: &self.compressed,
        }
    }
}

/// A segment's stored forms, decompressed.
pub struct Segment {
    plain: Vec<u8>,
    /// Start and end of each stored form in `plain`, in seq order.
    spans: Vec<(usize, usize)>,
}

impl Segment {
    /// Decode a `data` value; `count` is what the segment's row says it holds.
    pub fn decode(data: &[u8], count: usize) -> Result<Segment, SegmentError> {
        let len_bytes: [u8; 4] = data
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(SegmentError::Truncated)?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_SEGMENT_LEN {
            return Err(SegmentError::TooLong(len));
        }
        let mut plain = vec![0u8; len];
        let n = lz4_flex::block::decompress_into(&data[4..], &mut plain)
            .map_err(|_| SegmentError::Lz4)?;
        if n != len {
            return Err(SegmentError::Truncated);
        }
        let mut r = varint::Reader::new(&plain);
        let format = r.byte()?;
        if format != FORMAT_V1 {
            return Err(SegmentError::UnknownFormat(format));
        }
        let found = r.varint()?;
        if found != count as u64 {
            return Err(SegmentError::Count {
                expected: count,
                found: usize::try_from(found).unwrap_or(usize::MAX),
            });
        }
        // Each length takes at least one byte: a count beyond what is left is a
        // damaged row, refused before it sizes an allocation (a 19-byte segment
        // claiming 2^40 events used to abort the process allocating 8 TiB).
        if count > plain.len() - r.pos() {
            return Err(SegmentError::Truncated);
        }
        let mut lengths = Vec::with_capacity(count);
        for _ in 0..count {
            lengths.push(r.varint()?);
        }
        let mut at = r.pos();
        let mut spans = Vec::with_capacity(count);
        for l in lengths {
            let end = u64::try_from(at)
                .ok()
                .and_then(|a| a.checked_add(l))
                .filter(|&e| e <= plain.len() as u64)
                .ok_or(SegmentError::Truncated)? as usize;
            spans.push((at, end));
            at = end;
        }
        Ok(Segment { plain, spans })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The stored form of the event at `offset` (its seq minus the segment's first).
    pub fn stored(&self, offset: usize) -> Option<&[u8]> {
        self.spans.get(offset).map(|&(a, b)| &self.plain[a..b])
    }
}

/// The position of `id` in a segment's `ids` value.
pub fn find_id(ids: &[u8], id: &Uuid) -> Option<usize> {
    ids.chunks_exact(16).position(|c| c == id.as_bytes())
}

/// The ids in a segment's `ids` value.
pub fn ids(ids: &[u8]) -> impl Iterator<Item = [u8; 16]> + '_ {
    ids.chunks_exact(16)
        .filter_map(|c| <[u8; 16]>::try_from(c).ok())
}

impl From<varint::Truncated> for SegmentError {
    fn from(_: varint::Truncated) -> SegmentError {
        SegmentError::Truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A built segment's rows, owned.
    struct Built {
        count: usize,
        min_time: i64,
        max_time: i64,
        min_id: [u8; 16],
        max_id: [u8; 16],
        ids: Vec<u8>,
        data: Vec<u8>,
    }

    /// Push `n` events (number `from` on) into `b` and finish the segment.
    fn build(b: &mut SegmentBuilder, from: usize, n: usize) -> (Built, Vec<Uuid>, Vec<Vec<u8>>) {
        let mut ids = Vec::new();
        let mut bodies = Vec::new();
        for i in from..from + n {
            let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128);
            let body = format!("record {i} host{}.example", i % 7).into_bytes();
            b.push(id, 1_000 + (i as i64 % 5), &body);
            ids.push(id);
            bodies.push(body);
        }
        let s = b.finish();
        let built = Built {
            count: s.count,
            min_time: s.min_time,
            max_time: s.max_time,
            min_id: s.min_id,
            max_id: s.max_id,
            ids: s.ids.to_vec(),
            data: s.data.to_vec(),
        };
        (built, ids, bodies)
    }

    fn built(n: usize) -> (Built, Vec<Uuid>, Vec<Vec<u8>>) {
        build(&mut SegmentBuilder::default(), 0, n)
    }

    /// One builder makes segment after segment (its buffers are reused):
    /// each holds exactly its own events.
    #[test]
    fn a_reused_builder_makes_independent_segments() {
        let mut b = SegmentBuilder::default();
        for (round, n) in [(0, 200), (1, 3), (2, 256)] {
            let (seg, ids, bodies) = build(&mut b, round * 1000, n);
            assert_eq!(seg.count, n);
            assert_eq!(seg.ids.len(), 16 * n);
            assert_eq!(seg.min_id, *ids[0].as_bytes());
            let decoded = Segment::decode(&seg.data, n).unwrap();
            for (i, body) in bodies.iter().enumerate() {
                assert_eq!(decoded.stored(i), Some(body.as_slice()), "round {round}");
                assert_eq!(find_id(&seg.ids, &ids[i]), Some(i));
            }
        }
        assert!(b.is_empty());
    }

    #[test]
    fn events_read_back_in_order_with_their_bounds() {
        let (seg, ids, bodies) = built(200);
        assert_eq!((seg.count, seg.min_time, seg.max_time), (200, 1_000, 1_004));
        assert_eq!(seg.min_id, *ids[0].as_bytes());
        assert_eq!(seg.max_id, *ids[199].as_bytes());
        let decoded = Segment::decode(&seg.data, 200).unwrap();
        assert_eq!(decoded.len(), 200);
        for (i, body) in bodies.iter().enumerate() {
            assert_eq!(decoded.stored(i), Some(body.as_slice()));
        }
        assert_eq!(decoded.stored(200), None);
        assert_eq!(find_id(&seg.ids, &ids[123]), Some(123));
        assert_eq!(find_id(&seg.ids, &Uuid::nil()), None);
        assert!(seg.data.len() * 3 < bodies.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn damaged_segments_are_errors_not_panics() {
        let (seg, _, _) = built(40);
        for cut in 0..seg.data.len() {
            let _ = Segment::decode(&seg.data[..cut], 40);
        }
        for i in 0..seg.data.len() {
            let mut bad = seg.data.clone();
            bad[i] ^= 0x5a;
            let _ = Segment::decode(&bad, 40);
        }
        assert!(matches!(
            Segment::decode(&seg.data, 41),
            Err(SegmentError::Count { .. })
        ));
        let mut huge = seg.data.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Segment::decode(&huge, 40),
            Err(SegmentError::TooLong(_))
        ));
    }

    /// Run through the `store_decode` fuzz target: a segment whose row and
    /// header agree on 2^40 events, with no lengths behind them, aborted the
    /// process allocating 8 TiB.
    #[test]
    fn a_count_beyond_the_data_is_refused_before_allocating() {
        // 7 bytes plain (format 1, varint 2^40) as one LZ4 literal run.
        let data = [7, 0, 0, 0, 0x70, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        assert_eq!(
            Segment::decode(&data, 1 << 40).err(),
            Some(SegmentError::Truncated)
        );
    }
}
