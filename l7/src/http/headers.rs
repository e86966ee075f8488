//! The header fields of one message head, held in one buffer.
//!
//! Contract: [`Headers`] keeps every field in the order received, names
//! as sent (compare them case-insensitively) and values as raw bytes. A
//! head of any number of fields costs three allocations (names, values and
//! field ends), not two per field: the proxy parses two heads per request.

use std::fmt;
use std::ops::Range;

/// One header field as stored in [`Headers`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Field name as received (compare case-insensitively).
    pub name: &'a str,
    /// Raw field value.
    pub value: &'a [u8],
}

impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, String::from_utf8_lossy(self.value))
    }
}

/// Header fields in order: the names back to back in one string, the
/// values back to back in one buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `name0 name1 …`, all ASCII (checked on push).
    names: String,
    /// `value0 value1 …`.
    values: Vec<u8>,
    /// For each field, where its name ends in `names`, where its value
    /// ends in `values`, and its name's [`name_key`] (lookups compare keys
    /// before they compare names).
    ends: Vec<(u32, u32, u32)>,
}

/// A name's length and its first and last bytes, lower-cased: equal for
/// names equal up to ASCII case, and different for most other pairs, so a
/// lookup compares whole names only where these match.
fn name_key(name: &[u8]) -> u32 {
    match name {
        [] => 0,
        [first, .., last] | [first @ last] => {
            ((name.len() as u32) << 16)
                | (u32::from(first.to_ascii_lowercase()) << 8)
                | u32::from(last.to_ascii_lowercase())
        }
    }
}

impl Headers {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `fields` fields whose names take `name_bytes` and whose
    /// values take `value_bytes`, so that filling it allocates once per
    /// buffer.
    pub fn with_capacity(fields: usize, name_bytes: usize, value_bytes: usize) -> Self {
        Headers {
            names: String::with_capacity(name_bytes),
            values: Vec::with_capacity(value_bytes),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Append a field.
    ///
    /// # Panics
    /// If `name` is not ASCII (httparse only yields token names; callers
    /// that build fields use literals), or if the fields grow past 4 GiB.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        assert!(name.is_ascii(), "header names are ASCII tokens");
        self.names.push_str(name);
        self.values.extend_from_slice(value);
        self.ends.push((
            offset(self.names.len()),
            offset(self.values.len()),
            name_key(name.as_bytes()),
        ));
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of all names and values (what the fields take on the wire,
    /// less `": "` and CRLF per field).
    pub fn text_len(&self) -> usize {
        self.names.len() + self.values.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`th field.
    pub fn get(&self, i: usize) -> Option<Header<'_>> {
        self.iter().nth(i)
    }

    /// The fields in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            spans: self.spans(),
        }
    }

    /// Where each field's name lies in `names` and its value in `values`,
    /// with its name's key.
    fn spans(&self) -> Spans<'_> {
        Spans {
            ends: self.ends.iter(),
            starts: (0, 0),
        }
    }

    /// The values of the fields named `name` (ASCII case-insensitive), in
    /// order. Names are compared as bytes: the lookups a request makes
    /// (a dozen or so) cost no string slicing.
    pub fn values_of<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let names = self.names.as_bytes();
        let key = name_key(name.as_bytes());
        self.spans().filter_map(move |(n, v, k)| {
            (k == key && names[n].eq_ignore_ascii_case(name.as_bytes())).then(|| &self.values[v])
        })
    }

    /// Replace the value of the first field named `name` (ASCII
    /// case-insensitive), or append the field when there is none.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        let Some(at) = self.iter().position(|h| h.name.eq_ignore_ascii_case(name)) else {
            self.push(name, value);
            return;
        };
        let mut rebuilt = Headers::with_capacity(
            self.len(),
            self.names.len(),
            self.values.len() + value.len(),
        );
        for (i, h) in self.iter().enumerate() {
            rebuilt.push(h.name, if i == at { value } else { h.value });
        }
        *self = rebuilt;
    }
}

/// A buffer offset as stored in `ends`.
fn offset(len: usize) -> u32 {
    u32::try_from(len).expect("header fields larger than 4 GiB")
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<(&'a str, &'a [u8])> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a [u8])>>(fields: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in fields {
            headers.push(name, value);
        }
        headers
    }
}

/// The spans of [`Headers`]' fields, in order: name range, value range,
/// name key.
#[derive(Debug, Clone)]
struct Spans<'a> {
    ends: std::slice::Iter<'a, (u32, u32, u32)>,
    /// Where the next field starts in the names and in the values.
    starts: (u32, u32),
}

impl Iterator for Spans<'_> {
    type Item = (Range<usize>, Range<usize>, u32);

    fn next(&mut self) -> Option<Self::Item> {
        let &(name_end, value_end, key) = self.ends.next()?;
        let (name_start, value_start) = std::mem::replace(&mut self.starts, (name_end, value_end));
        Some((
            name_start as usize..name_end as usize,
            value_start as usize..value_end as usize,
            key,
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

/// The fields of [`Headers`] in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    spans: Spans<'a>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        let (name, value, _) = self.spans.next()?;
        Some(Header {
            name: &self.headers.names[name],
            value: &self.headers.values[value],
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = Header<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_order_names_and_values() {
        let mut h = Headers::new();
        h.push("Host", b"a.example");
        h.push("X-Empty", b"");
        h.push("x-bytes", b"\xff\x00 v");
        assert_eq!(h.len(), 3);
        let all: Vec<(&str, &[u8])> = h.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            all,
            [
                ("Host", &b"a.example"[..]),
                ("X-Empty", b""),
                ("x-bytes", b"\xff\x00 v")
            ]
        );
        assert_eq!(h.get(3), None);
        assert_eq!(
            format!("{h:?}"),
            "[Host: a.example, X-Empty: , x-bytes: \u{fffd}\0 v]"
        );
    }

    #[test]
    fn lookups_ignore_case_and_tell_apart_names_of_one_length() {
        // Same length, same first and last letters: only the whole names differ.
        let h: Headers = [
            ("Accept", &b"1"[..]),
            ("EXPECT", b"2"),
            ("accept", b"3"),
            ("aXXXXt", b"4"),
            ("A", b"5"),
            ("", b"6"),
        ]
        .into_iter()
        .collect();
        let of = |n: &str| h.values_of(n).collect::<Vec<_>>();
        assert_eq!(of("ACCEPT"), [&b"1"[..], b"3"]);
        assert_eq!(of("expect"), [&b"2"[..]]);
        assert_eq!(of("axxxxt"), [&b"4"[..]]);
        assert_eq!(of("a"), [&b"5"[..]]);
        assert_eq!(of(""), [&b"6"[..]]);
        assert!(of("accepts").is_empty());
        assert!(of("abcdet").is_empty());
    }

    #[test]
    fn set_replaces_the_first_match_in_place_or_appends() {
        let mut h: Headers = [("A", &b"1"[..]), ("host", b"old"), ("Host", b"second")]
            .into_iter()
            .collect();
        h.set("HOST", b"new.example:8443");
        let all: Vec<(&str, &[u8])> = h.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            all,
            [
                ("A", &b"1"[..]),
                ("host", b"new.example:8443"),
                ("Host", b"second")
            ]
        );
        let mut empty = Headers::new();
        empty.set("Host", b"h");
        assert_eq!(
            empty.get(0).map(|f| (f.name, f.value)),
            Some(("Host", &b"h"[..]))
        );
        assert!(!empty.is_empty());
    }

    #[test]
    fn values_of_finds_every_field_of_a_name_in_any_case() {
        let h: Headers = [
            ("Connection", &b"keep-alive"[..]),
            ("X", b"1"),
            ("connection", b"Upgrade"),
            ("CONNECTIONS", b"no"),
            ("", b"empty name"),
        ]
        .into_iter()
        .collect();
        let found: Vec<&[u8]> = h.values_of("CONNECTION").collect();
        assert_eq!(found, [&b"keep-alive"[..], b"Upgrade"]);
        assert_eq!(h.values_of("x").collect::<Vec<_>>(), [&b"1"[..]]);
        assert_eq!(h.values_of("absent").count(), 0);
        assert_eq!(h.iter().count(), 5);
        assert_eq!(h.iter().nth(4).map(|f| f.value), Some(&b"empty name"[..]));
    }

    #[test]
    #[should_panic(expected = "ASCII")]
    fn a_non_ascii_name_is_refused() {
        Headers::new().push("Höst", b"x");
    }
}
