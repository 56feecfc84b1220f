//! Validated directory-entry names. The FUSE adapter converts every name it receives exactly
//! once, here; `core` only ever sees a `Name`.

use std::fmt;

use crate::error::{Error, Result};

/// The longest name a directory entry may have, as on ext4.
pub const NAME_MAX: usize = 255;

/// The hidden control directory at the mount root. It is not a bucket, so no bucket may take
/// this name.
pub const CONTROL_DIR: &[u8] = b".lunafs";

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    pub fn new(raw: &[u8]) -> Result<Name> {
        if raw.len() > NAME_MAX {
            return Err(Error::NameTooLong(raw.len()));
        }
        if raw.is_empty() || raw == b"." || raw == b".." || raw.contains(&b'/') || raw.contains(&0)
        {
            return Err(Error::InvalidName(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        }
        Ok(Name(raw.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_control_dir(&self) -> bool {
        self.0 == CONTROL_DIR
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_bytes_but_slash_and_nul_up_to_255() {
        assert!(Name::new(b"caf\xc3\xa9 \xff.jpg").is_ok());
        assert!(Name::new(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn rejects_what_no_directory_entry_can_be() {
        assert!(matches!(
            Name::new(&[b'a'; 256]),
            Err(Error::NameTooLong(256))
        ));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(
                matches!(Name::new(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
