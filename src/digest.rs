//! MD5 digests as lower-case hex: S3 eTags (core) and the `digest` module scripts use (lua);
//! and random ids (store ids, session ids, object ids). The one hashing and randomness
//! helper, at the root so that every layer uses it without reaching into another.

use md5::{Digest, Md5};

/// 8 random bytes from the kernel.
pub fn random_bytes() -> crate::error::Result<[u8; 8]> {
    use std::io::Read;
    let mut buf = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| crate::error::Error::io("reading /dev/urandom", e))?;
    Ok(buf)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The hex MD5 a hasher has been fed.
pub fn md5_hex(h: Md5) -> String {
    hex(h.finalize().as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(md5_hex(Md5::new()), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
