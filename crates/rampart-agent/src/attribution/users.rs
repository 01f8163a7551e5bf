//! uid → user name from the passwd database (`/etc/passwd`; the agent does not link NSS).

use std::collections::HashMap;

/// Parse passwd text into a uid → name map; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            (!name.is_empty()).then(|| (uid, name.to_string()))
        })
        .collect()
}

/// Load `/etc/passwd`; an unreadable file yields an empty map (names are optional).
pub fn load() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .map(|text| parse_passwd(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_uids_to_names_and_skips_bad_lines() {
        let map = parse_passwd("root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:notanumber:1::/:/bin/sh\n");
        assert_eq!(map.get(&0).map(String::as_str), Some("root"));
        assert_eq!(map.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(map.len(), 2);
    }
}
