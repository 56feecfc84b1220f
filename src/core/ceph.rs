//! Ceph's own ways of sending an inline script to cls_lua, so a Ceph client's request runs
//! unchanged: the built-in class `lua` with the methods `eval_json` (a JSON object with
//! `script`, `handler` and an optional `input`, as json_spirit reads it: a trailing comma
//! is fine) and `eval_bufferlist` (Ceph's binary encoding of `cls_lua_eval_op`: version,
//! compat version and length, then the script, the handler and the input, each a
//! little-endian u32 length and the bytes). A request that does not decode is -EINVAL, as
//! in Ceph. Because the name `lua` means these, no stored class may take it.

use crate::error::{Error, Result};

/// The reserved class name.
pub const CLASS: &str = "lua";

/// A decoded request: the script, the handler to call (empty: only run the chunk) and the
/// handler's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eval {
    pub script: Vec<u8>,
    pub handler: String,
    pub input: Vec<u8>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("lua.eval request: {}", why.into()))
}

/// Decodes the input of `lua.METHOD`; None if METHOD is not one of Ceph's.
pub fn decode(method: &str, input: &[u8]) -> Option<Result<Eval>> {
    match method {
        "eval_json" => Some(from_json(input)),
        "eval_bufferlist" => Some(from_bufferlist(input)),
        _ => None,
    }
}

fn from_json(input: &[u8]) -> Result<Eval> {
    let text = std::str::from_utf8(input).map_err(|_| bad("unparseable JSON"))?;
    let value: serde_json::Value = serde_json::from_str(&without_trailing_commas(text))
        .map_err(|_| bad("unparseable JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("input not a JSON object"))?;
    let field = |name: &str, required: bool| -> Result<Option<String>> {
        match obj.get(name) {
            None if required => Err(bad(format!("no '{name}' field in the JSON object"))),
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("'{name}' is not a string"))),
        }
    };
    Ok(Eval {
        script: field("script", true)?.unwrap_or_default().into_bytes(),
        handler: field("handler", true)?.unwrap_or_default(),
        input: field("input", false)?.unwrap_or_default().into_bytes(),
    })
}

/// JSON text with commas that end an object or array removed (outside strings).
fn without_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' {
            let next = bytes[i + 1..].iter().find(|b| !b.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn from_bufferlist(input: &[u8]) -> Result<Eval> {
    let mut r = Reader(input);
    let (_version, compat) = (r.u8()?, r.u8()?);
    if compat > 1 {
        return Err(bad(format!("encoding compat version {compat}")));
    }
    let len = r.u32()? as usize;
    let mut body = Reader(r.take(len)?);
    let script = body.blob()?.to_vec();
    let handler = String::from_utf8(body.blob()?.to_vec()).map_err(|_| bad("handler name"))?;
    let input = body.blob()?.to_vec();
    Ok(Eval {
        script,
        handler,
        input,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("could not decode ceph encoded input"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_requests_decode_as_ceph_reads_them() {
        let req = br#"{ "script": "x = 1", "handler": "h", "input": "a\u00e9", }"#;
        let e = decode("eval_json", req).unwrap().unwrap();
        assert_eq!(e.script, b"x = 1");
        assert_eq!(e.handler, "h");
        assert_eq!(e.input, "a\u{e9}".as_bytes());
        let e = decode("eval_json", br#"{"script": "a, }", "handler": ""}"#)
            .unwrap()
            .unwrap();
        assert_eq!(e.script, b"a, }", "commas inside strings stay");
        for bad in [
            &br#"{"script": 5, "handler": ""}"#[..],
            b"[1]",
            br#"{"handler":"h"}"#,
            br#"{"script":"x"}"#,
            b"garbage",
        ] {
            assert_eq!(
                decode("eval_json", bad).unwrap().unwrap_err().errno(),
                libc::EINVAL
            );
        }
        assert!(decode("other", b"").is_none());
    }

    #[test]
    fn bufferlist_requests_decode_cephs_encoding() {
        let blob = |b: &[u8]| [&(b.len() as u32).to_le_bytes()[..], b].concat();
        let body = [blob(b"x = 1"), blob(b"h"), blob(b"in")].concat();
        let mut req = vec![1, 1];
        req.extend((body.len() as u32).to_le_bytes());
        req.extend(&body);
        let e = decode("eval_bufferlist", &req).unwrap().unwrap();
        assert_eq!(
            (e.script.as_slice(), e.handler.as_str(), e.input.as_slice()),
            (&b"x = 1"[..], "h", &b"in"[..])
        );
        assert!(decode("eval_bufferlist", &req[..req.len() - 1])
            .unwrap()
            .is_err());
    }
}
