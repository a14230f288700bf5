//! Validated names.
//!
//! Space names come from users and end up in SQL (bound, never formatted), logs and metric
//! attributes, so they are validated once, at the edge: `[A-Za-z0-9_.-]{1,128}`. A
//! [`SpaceName`] is cheap to clone (a shared string) because it travels with every command.

use std::fmt;
use std::sync::Arc;

use crate::error::InvalidInput;

/// Longest space or projection-type name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Longest operation id or owner accepted.
pub const MAX_ID_LEN: usize = 512;

/// The name of a space: an independent ordered log with its own counter and watermark.
#[derive(Clone)]
pub struct SpaceName(Arc<Name>);

/// A space name's text and its hash, computed once: names key the maps every command looks
/// its space up in (the store's, the barrier's), several times a grant→commit cycle.
struct Name {
    hash: u64,
    text: Box<str>,
}

/// Hashes every space name of the process, with a seed chosen at random once.
fn name_hasher() -> &'static foldhash::quality::RandomState {
    static HASHER: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    HASHER.get_or_init(Default::default)
}

impl PartialEq for SpaceName {
    fn eq(&self, other: &Self) -> bool {
        // Names travel as clones of one Arc: the pointer check settles most comparisons,
        // and different hashes settle most of the rest.
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.text == other.0.text)
    }
}

impl Eq for SpaceName {}

impl std::hash::Hash for SpaceName {
    // Equal names have equal texts, so equal hashes: consistent with `eq`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for SpaceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpaceName {
    /// By text, as the stores list spaces.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl SpaceName {
    /// Validate `name` as a space name.
    pub fn new(name: &str) -> Result<Self, InvalidInput> {
        validate_name("space", name)?;
        Ok(SpaceName(Arc::new(Name {
            hash: std::hash::BuildHasher::hash_one(name_hasher(), name),
            text: name.into(),
        })))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

impl fmt::Display for SpaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SpaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl AsRef<str> for SpaceName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for SpaceName {
    type Error = InvalidInput;
    fn try_from(s: &str) -> Result<Self, InvalidInput> {
        SpaceName::new(s)
    }
}

/// Check a name against `[A-Za-z0-9_.-]{1,128}`; `what` names the field in the error.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), InvalidInput> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 128 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(InvalidInput::Name {
            what: name_field(what),
            name: truncate_for_display(name),
            reason,
        }),
    }
}

/// "space" → "space name": names are reported as such, ids by their own field name.
fn name_field(what: &'static str) -> &'static str {
    match what {
        "space" => "space name",
        "projection type" => "projection type name",
        "resource" => "resource name",
        other => other,
    }
}

/// Check a free-form identifier (operation id, owner): 1..=512 bytes, no control characters.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), InvalidInput> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_ID_LEN {
        Some("it is longer than 512 bytes")
    } else if has_control(id) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(InvalidInput::Name {
            what,
            name: truncate_for_display(id),
            reason,
        }),
    }
}

/// Whether `id` contains a control character (`char::is_control`: U+0000–U+001F and
/// U+007F–U+009F). Every grant checks its operation id and owner, and ids are nearly always
/// printable ASCII: one pass without branches over the bytes (which the compiler
/// vectorizes) clears those; only ids with other bytes are decoded.
fn has_control(id: &str) -> bool {
    let plain = id
        .bytes()
        .fold(true, |plain, b| plain & (0x20..0x7f).contains(&b));
    !plain && id.chars().any(char::is_control)
}

fn truncate_for_display(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return s.to_string();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_made_apart_are_equal_hash_alike_and_order_by_text() {
        use std::collections::HashMap;
        let (a, again, b) = (
            SpaceName::new("orders").unwrap(),
            SpaceName::new("orders").unwrap(),
            SpaceName::new("billing").unwrap(),
        );
        assert!(!Arc::ptr_eq(&a.0, &again.0));
        assert_eq!(a, again);
        assert_ne!(a, b);
        let map: HashMap<SpaceName, u32> = [(a.clone(), 1), (b.clone(), 2)].into();
        assert_eq!((map[&again], map[&b]), (1, 2));
        let mut names = [a.clone(), b.clone(), SpaceName::new("a-first").unwrap()];
        names.sort();
        let texts: Vec<&str> = names.iter().map(SpaceName::as_str).collect();
        assert_eq!(texts, ["a-first", "billing", "orders"]);
        assert_eq!(
            (a.to_string(), format!("{a:?}")),
            ("orders".into(), "\"orders\"".into())
        );
    }

    #[test]
    fn accepts_documented_alphabet() {
        for ok in ["orders-projections", "a", "A.b_c-9", &"x".repeat(128)] {
            assert!(SpaceName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        for bad in [
            "",
            "has space",
            "semi;colon",
            "ünï",
            &"x".repeat(129),
            "drop table--'",
        ] {
            let err = SpaceName::new(bad).unwrap_err();
            assert!(err.to_string().contains("space name"), "{err}");
        }
    }

    #[test]
    fn ids_reject_control_characters_and_empty() {
        assert!(validate_id("operation id", "order-1/update").is_ok());
        assert!(validate_id("operation id", "").is_err());
        assert!(validate_id("operation id", "a\nb").is_err());
        assert!(validate_id("operation id", &"x".repeat(513)).is_err());
        // Both paths (ASCII and not) agree with `char::is_control` on every character of
        // the first 256 code points and a few beyond.
        for c in (0..=0x100u32).chain([0x2028, 0xfeff, 0x1f600]) {
            let c = char::from_u32(c).unwrap();
            for id in [format!("a{c}b"), format!("é{c}")] {
                assert_eq!(
                    validate_id("operation id", &id).is_err(),
                    c.is_control(),
                    "{:?}",
                    c
                );
            }
        }
    }
}
