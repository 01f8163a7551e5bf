//! `multipart/form-data` uploads (RFC 7578): the parts of a spooled body, so
//! each uploaded file is scanned as a file of its own and named by its file
//! name in findings, rather than the form's raw encoding being scanned as one
//! object.
//!
//! Two passes over a seekable body keep memory bounded whatever the part
//! sizes: the first finds every delimiter line, the second reads each part's
//! headers (bounded) and gives its content as a byte range.

use std::io::{Read, Seek, SeekFrom};

use memchr::memmem;

/// Largest header block of one part; real ones are a few hundred bytes.
const MAX_PART_HEADERS: usize = 16 * 1024;

const BLOCK: usize = 64 * 1024;

/// One part of the form: where its content lies in the body and what its
/// `Content-Disposition` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// The form field's name.
    pub(crate) name: Option<String>,
    /// The uploaded file's name, for file parts.
    pub(crate) file_name: Option<String>,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl Part {
    /// How findings name the part: its file name, else `form field "NAME"`.
    pub(crate) fn label(&self, index: usize) -> String {
        match (&self.file_name, &self.name) {
            (Some(f), _) if !f.is_empty() => f
                .rsplit(['/', '\\'])
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or(f)
                .to_owned(),
            (_, Some(n)) => format!("form field \"{n}\""),
            _ => format!("part {index}"),
        }
    }
}

/// The boundary of a `multipart/form-data` content type, if that is what it is.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (key, value) = p.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        // RFC 2046 §5.1.1: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// Splits `body` (`len` bytes) into its parts. `max_parts` bounds the work a
/// hostile body can ask for. An error means the body is not a well-formed
/// form: the caller scans it as one object instead.
pub(crate) fn parts<R: Read + Seek>(
    body: &mut R,
    len: u64,
    boundary: &str,
    max_parts: u64,
) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let lines = delimiter_lines(body, delimiter.as_bytes(), max_parts)?;
    let mut parts = Vec::new();
    for pair in lines.windows(2) {
        let (this, next) = (pair[0], pair[1]);
        let after = this + delimiter.len() as u64;
        // The close delimiter `--boundary--` ends the form.
        let mut mark = [0u8; 2];
        read_at(body, after, &mut mark)?;
        if &mark == b"--" {
            return Ok(parts);
        }
        // The delimiter line ends with CRLF (transport padding is rare; allowed).
        let header_start = line_end(body, after, next)?;
        // The CRLF before the next delimiter belongs to the delimiter.
        let content_end = next.saturating_sub(2).max(header_start);
        let (headers, content_start) = read_headers(body, header_start, content_end)?;
        let (name, file_name) = disposition(&headers);
        parts.push(Part {
            name,
            file_name,
            start: content_start,
            len: content_end - content_start,
        });
    }
    match lines.last() {
        // Every form ends with a close delimiter; a body cut before it is
        // scanned whole instead.
        Some(last) if *last + delimiter.len() as u64 + 2 <= len => {
            let mut mark = [0u8; 2];
            read_at(body, *last + delimiter.len() as u64, &mut mark)?;
            if &mark == b"--" {
                return Ok(parts);
            }
            Err("multipart: no close delimiter".into())
        }
        _ => Err("multipart: no close delimiter".into()),
    }
}

/// Offsets of every delimiter that starts a line (at offset 0 or after CRLF).
fn delimiter_lines<R: Read + Seek>(
    body: &mut R,
    delimiter: &[u8],
    max_parts: u64,
) -> Result<Vec<u64>, String> {
    let finder = memmem::Finder::new(delimiter);
    // Two bytes before the delimiter (the CRLF) are kept from the previous block.
    let keep = delimiter.len() + 1;
    body.seek(SeekFrom::Start(0)).map_err(io_error)?;
    let mut found = Vec::new();
    let mut window: Vec<u8> = Vec::with_capacity(BLOCK + keep);
    let mut window_start: u64 = 0;
    let mut block = vec![0u8; BLOCK];
    loop {
        let n = body.read(&mut block).map_err(io_error)?;
        if n == 0 {
            break;
        }
        window.extend_from_slice(&block[..n]);
        for at in finder.find_iter(&window) {
            let offset = window_start + at as u64;
            let starts_line = offset == 0 || (at >= 2 && &window[at - 2..at] == b"\r\n");
            if starts_line && found.last().is_none_or(|l| *l < offset) {
                found.push(offset);
                if found.len() as u64 > max_parts + 1 {
                    return Err(format!("multipart: more than {max_parts} parts"));
                }
            }
        }
        if window.len() > keep {
            let drop = window.len() - keep;
            window.drain(..drop);
            window_start += drop as u64;
        }
    }
    if found.is_empty() {
        return Err("multipart: no delimiter".into());
    }
    Ok(found)
}

/// The offset after the CRLF ending the delimiter line at `from`.
fn line_end<R: Read + Seek>(body: &mut R, from: u64, limit: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 256.min(limit.saturating_sub(from) as usize)];
    read_at(body, from, &mut buf)?;
    memmem::find(&buf, b"\r\n")
        .map(|i| from + i as u64 + 2)
        .ok_or_else(|| "multipart: delimiter line does not end".to_owned())
}

/// The part's header block (up to [`MAX_PART_HEADERS`]) and where its content starts.
fn read_headers<R: Read + Seek>(
    body: &mut R,
    from: u64,
    limit: u64,
) -> Result<(String, u64), String> {
    let available = limit.saturating_sub(from) as usize;
    let mut buf = vec![0u8; available.min(MAX_PART_HEADERS) + 2];
    let n = read_at(body, from, &mut buf)?;
    buf.truncate(n);
    // A part without headers starts with its blank line.
    if buf.starts_with(b"\r\n") {
        return Ok((String::new(), from + 2));
    }
    match memmem::find(&buf, b"\r\n\r\n") {
        Some(end) => Ok((
            String::from_utf8_lossy(&buf[..end]).into_owned(),
            from + end as u64 + 4,
        )),
        None => Err("multipart: part headers too long or unterminated".into()),
    }
}

/// `name` and `filename` of the part's `Content-Disposition`.
fn disposition(headers: &str) -> (Option<String>, Option<String>) {
    let Some(value) = headers.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    }) else {
        return (None, None);
    };
    let mut name = None;
    let mut file_name = None;
    for param in value.split(';').skip(1) {
        let Some((key, v)) = param.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v),
            "filename" => file_name = Some(v),
            _ => {}
        }
    }
    (name, file_name)
}

/// Reads up to `buf.len()` bytes at `offset`; the count read.
fn read_at<R: Read + Seek>(body: &mut R, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
    body.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let mut filled = 0;
    while filled < buf.len() {
        match body.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(filled)
}

fn io_error(e: std::io::Error) -> String {
    format!("multipart: spool: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn form() -> Vec<u8> {
        b"--XyZ\r\n\
Content-Disposition: form-data; name=\"comment\"\r\n\r\n\
hello\r\n\
--XyZ\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"payment.txt\"\r\n\
Content-Type: text/plain\r\n\r\n\
card: 4111 1111 1111 1111\n--XyZ is not a delimiter here\r\n\
--XyZ--\r\n"
            .to_vec()
    }

    #[test]
    fn boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
    }

    #[test]
    fn parts_are_found_with_their_names_and_ranges() {
        let body = form();
        let got = parts(&mut Cursor::new(&body), body.len() as u64, "XyZ", 100).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name.as_deref(), Some("comment"));
        assert_eq!(got[0].label(0), "form field \"comment\"");
        let content = |p: &Part| &body[p.start as usize..(p.start + p.len) as usize];
        assert_eq!(content(&got[0]), b"hello");
        assert_eq!(got[1].label(1), "payment.txt");
        assert_eq!(
            content(&got[1]),
            b"card: 4111 1111 1111 1111\n--XyZ is not a delimiter here"
        );
    }

    #[test]
    fn a_form_without_its_close_delimiter_or_with_too_many_parts_is_refused() {
        let body = form();
        let cut = &body[..body.len() - 9];
        assert!(parts(&mut Cursor::new(cut), cut.len() as u64, "XyZ", 100).is_err());
        assert!(parts(&mut Cursor::new(&body), body.len() as u64, "XyZ", 1).is_err());
        assert!(parts(&mut Cursor::new(b"no form"), 7, "XyZ", 100).is_err());
    }
}
