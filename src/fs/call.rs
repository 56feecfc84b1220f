//! The `/.lunafs/call` protocol: handler calls as request/response on one open file, binary
//! safe (Ceph's `exec`, and `eval` for inline scripts). The README documents it for clients.
//!
//! ```text
//! request:  exec CLASS.METHOD INPUT_LEN PATH\n  INPUT
//!           eval METHOD SCRIPT_LEN INPUT_LEN PATH\n  SCRIPT INPUT
//! response: RESULT OUTPUT_LEN MESSAGE_LEN\n  OUTPUT MESSAGE
//! ```
//! PATH is the object's path from the mount root (`bucket/key`, the rest of the line, so it
//! may hold spaces). Writes append to the request whatever their offset; the call runs on the
//! first read after the request is complete. (Not inside the write: the kernel holds the
//! file's inode lock for a direct write, so calls made in writes would run one at a time
//! across the whole mount; reads take no such lock.) Reads return the response in order,
//! whatever their offset, like a socket; a new request may follow on the same open file. A
//! malformed request fails its write with EINVAL; everything that goes wrong after parsing
//! (no such object, no access, the handler's errors) is a response.

use crate::error::{Error, Result};

/// Longest request line (a path of PATH_MAX plus the fields).
const MAX_HEADER: usize = 8192;

/// Largest script plus input of one request: the file is open to every user, and the bytes
/// are held in the daemon until the request is complete.
pub const MAX_BODY: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Exec { class: String, method: String },
    Eval { method: String, script: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub what: What,
    pub path: Vec<u8>,
    pub input: Vec<u8>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("/.lunafs/call request: {}", why.into()))
}

fn number(field: Option<&[u8]>, what: &str) -> Result<usize> {
    let f = field.ok_or_else(|| bad(format!("missing {what}")))?;
    std::str::from_utf8(f)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            bad(format!(
                "{what} {:?} is not a number",
                String::from_utf8_lossy(f)
            ))
        })
}

fn word(field: Option<&[u8]>, what: &str) -> Result<String> {
    let f = field.ok_or_else(|| bad(format!("missing {what}")))?;
    String::from_utf8(f.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// A complete request at the start of `buf`, None if more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Request>> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_HEADER {
            return Err(bad(format!(
                "no request line in the first {MAX_HEADER} bytes"
            )));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let body = &buf[nl + 1..];
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (verb, rest) = (&line[..verb_end], line.get(verb_end + 1..).unwrap_or(&[]));
    let fields = match verb {
        b"exec" => 2,
        b"eval" => 3,
        other => {
            return Err(bad(format!(
                "unknown verb {:?} (exec or eval)",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let mut parts = rest.splitn(fields + 1, |&b| b == b' ');
    let (what, script_len, input_len) = if verb == b"exec" {
        let target = word(parts.next(), "CLASS.METHOD")?;
        let (class, method) = target
            .split_once('.')
            .filter(|(c, m)| !c.is_empty() && !m.is_empty())
            .ok_or_else(|| bad(format!("{target:?} is not CLASS.METHOD")))?;
        let what = What::Exec {
            class: class.into(),
            method: method.into(),
        };
        (what, 0, number(parts.next(), "INPUT_LEN")?)
    } else {
        let method = word(parts.next(), "METHOD")?;
        let script_len = number(parts.next(), "SCRIPT_LEN")?;
        let input_len = number(parts.next(), "INPUT_LEN")?;
        let what = What::Eval {
            method,
            script: Vec::new(),
        };
        (what, script_len, input_len)
    };
    let path = parts.next().unwrap_or(&[]).to_vec();
    if path.is_empty() {
        return Err(bad("missing PATH"));
    }
    let need = script_len
        .checked_add(input_len)
        .filter(|&n| n <= MAX_BODY)
        .ok_or_else(|| {
            bad(format!(
                "script and input may hold {MAX_BODY} bytes at most"
            ))
        })?;
    if body.len() < need {
        return Ok(None);
    }
    if body.len() > need {
        return Err(bad(format!(
            "{} bytes after the request's body",
            body.len() - need
        )));
    }
    let what = match what {
        What::Eval { method, .. } => What::Eval {
            method,
            script: body[..script_len].to_vec(),
        },
        exec => exec,
    };
    Ok(Some(Request {
        what,
        path,
        input: body[script_len..].to_vec(),
    }))
}

pub fn response(result: i32, output: &[u8], message: &str) -> Vec<u8> {
    let mut out = format!("{result} {} {}\n", output.len(), message.len()).into_bytes();
    out.extend_from_slice(output);
    out.extend_from_slice(message.as_bytes());
    out
}

/// One open `/.lunafs/call` file: the request being written and the response being read.
#[derive(Default)]
pub struct Exchange {
    request: Vec<u8>,
    /// A complete request whose call has not run yet (it runs on the next read).
    pending: Option<Request>,
    response: Vec<u8>,
    read: usize,
}

impl Exchange {
    /// Adds written bytes; once they make a complete request it waits for the next read.
    /// A new request discards an unread response (and a call never read).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.request.is_empty() {
            self.response.clear();
            self.read = 0;
            self.pending = None;
        }
        self.request.extend_from_slice(data);
        match parse(&self.request) {
            Ok(Some(req)) => {
                self.request.clear();
                self.pending = Some(req);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.request.clear();
                Err(e)
            }
        }
    }

    /// The request whose call is due (at a read), once.
    pub fn take_pending(&mut self) -> Option<Request> {
        self.pending.take()
    }

    pub fn respond(&mut self, response: Vec<u8>) {
        self.response = response;
        self.read = 0;
    }

    /// The next `len` bytes of the response.
    pub fn read(&mut self, len: usize) -> Vec<u8> {
        let end = self.read.saturating_add(len).min(self.response.len());
        let out = self.response[self.read..end].to_vec();
        self.read = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_parse_with_binary_input_and_spaces_in_the_path() {
        let mut buf = b"exec md5.digest 3 photos/my cat.jpg\n".to_vec();
        buf.extend_from_slice(b"a\0b");
        let req = parse(&buf).unwrap().unwrap();
        assert_eq!(
            req.what,
            What::Exec {
                class: "md5".into(),
                method: "digest".into()
            }
        );
        assert_eq!(req.path, b"photos/my cat.jpg");
        assert_eq!(req.input, b"a\0b");
    }

    #[test]
    fn eval_requests_carry_script_then_input() {
        let req = parse(b"eval go 5 2 b/k\nx=1;;in").unwrap().unwrap();
        assert_eq!(
            req.what,
            What::Eval {
                method: "go".into(),
                script: b"x=1;;".to_vec()
            }
        );
        assert_eq!(req.input, b"in");
    }

    #[test]
    fn partial_requests_wait_and_bad_ones_are_refused() {
        assert_eq!(parse(b"exec a.b 10 b/k\nshort").unwrap(), None);
        assert_eq!(parse(b"exec a.b 1").unwrap(), None);
        assert!(parse(b"run a.b 0 b/k\n").is_err());
        assert!(parse(b"exec ab 0 b/k\n").is_err());
        assert!(parse(b"exec a.b x b/k\n").is_err());
        assert!(parse(b"exec a.b 0\n").is_err());
        assert!(parse(b"exec a.b 0 b/k\nextra").is_err());
        assert!(parse(format!("exec a.b {} b/k\n", MAX_BODY + 1).as_bytes()).is_err());
    }

    #[test]
    fn an_exchange_answers_in_order_and_takes_a_second_request() {
        let mut x = Exchange::default();
        x.write(b"exec a.b 2 b/k\nh").unwrap();
        assert_eq!(x.take_pending(), None);
        x.write(b"i").unwrap();
        let req = x.take_pending().unwrap();
        assert_eq!(req.input, b"hi");
        assert_eq!(x.take_pending(), None);
        x.respond(response(0, b"out", ""));
        assert_eq!(x.read(3), b"0 3");
        assert_eq!(x.read(100), b" 0\nout");
        x.write(b"exec a.b 0 b/k\n").unwrap();
        assert!(x.take_pending().is_some());
    }
}
