//! The `/.lunafs/call` protocol: handler calls as request/response on one open file, binary
//! safe (Ceph's `exec`, and `eval` for inline scripts). The README documents it for clients.
//!
//! ```text
//! request:  exec CLASS.METHOD INPUT_LEN PATH\n  INPUT
//!           eval METHOD SCRIPT_LEN INPUT_LEN PATH\n  SCRIPT INPUT
//! response: RESULT OUTPUT_LEN MESSAGE_LEN\n  OUTPUT MESSAGE
//! ```
//! PATH is the object's path from the mount root (`bucket/key`, the rest of the line, so it
//! may hold spaces). Writes append to the requests whatever their offset; the calls run on
//! the first read after a request is complete. (Not inside the write: the kernel holds the
//! file's inode lock for a direct write, so calls made in writes would run one at a time
//! across the whole mount; reads take no such lock.) Reads return the responses in order,
//! whatever their offset, like a socket; new requests may follow on the same open file.
//!
//! Requests may be pipelined: every request complete before a read is one batch, which that
//! read runs in order (each request its own call and transaction) and whose responses follow
//! one another. A client sending many calls thus pays two FUSE round trips per batch, not
//! per call. A write after a read starts a new batch and drops what is unread of the last
//! one's responses. A malformed request fails its write with EINVAL (and the requests that
//! write completed are dropped with it); everything that goes wrong after parsing (no such
//! object, no access, the handler's errors) is a response.

use crate::error::{Error, Result};

/// Longest request line (a path of PATH_MAX plus the fields).
const MAX_HEADER: usize = 8192;

/// Largest script plus input of one request, and of one batch: the file is open to every
/// user, and the bytes are held in the daemon until the batch runs.
pub const MAX_BODY: usize = 256 << 20;

/// Most requests in one batch (written before one read).
pub const MAX_BATCH: usize = 1024;

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

impl Request {
    /// The body bytes it holds (script and input).
    fn body_len(&self) -> usize {
        let script = match &self.what {
            What::Eval { script, .. } => script.len(),
            What::Exec { .. } => 0,
        };
        script + self.input.len()
    }
}

/// A complete request at the start of `buf` and the bytes it took, None if more bytes are
/// needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>> {
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
    let what = match what {
        What::Eval { method, .. } => What::Eval {
            method,
            script: body[..script_len].to_vec(),
        },
        exec => exec,
    };
    let request = Request {
        what,
        path,
        input: body[script_len..need].to_vec(),
    };
    Ok(Some((request, nl + 1 + need)))
}

pub fn response(result: i32, output: &[u8], message: &str) -> Vec<u8> {
    let mut out = format!("{result} {} {}\n", output.len(), message.len()).into_bytes();
    out.extend_from_slice(output);
    out.extend_from_slice(message.as_bytes());
    out
}

/// One open `/.lunafs/call` file: the requests being written and the responses being read.
#[derive(Default)]
pub struct Exchange {
    /// Bytes of a request not yet complete.
    request: Vec<u8>,
    /// Complete requests whose calls have not run yet (they run on the next read).
    pending: Vec<Request>,
    response: Vec<u8>,
    read: usize,
}

impl Exchange {
    /// Adds written bytes; the requests they complete wait for the next read. The first
    /// write after a read starts a new batch, dropping what is unread of the responses.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.request.is_empty() && self.pending.is_empty() {
            self.response.clear();
            self.read = 0;
        }
        self.request.extend_from_slice(data);
        let before = self.pending.len();
        let taken = self.take_requests();
        if taken.is_err() {
            self.request.clear();
            self.pending.truncate(before);
        }
        taken
    }

    /// Moves the complete requests at the start of `request` to `pending`.
    fn take_requests(&mut self) -> Result<()> {
        let mut at = 0;
        let mut held: usize = self.pending.iter().map(Request::body_len).sum();
        while let Some((req, used)) = parse(&self.request[at..])? {
            held += req.body_len();
            if held > MAX_BODY {
                return Err(bad(format!(
                    "the requests before a read may hold {MAX_BODY} bytes at most"
                )));
            }
            if self.pending.len() >= MAX_BATCH {
                return Err(bad(format!(
                    "at most {MAX_BATCH} requests may wait for a read"
                )));
            }
            self.pending.push(req);
            at += used;
        }
        self.request.drain(..at);
        Ok(())
    }

    /// The requests whose calls are due (at a read), once.
    pub fn take_pending(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.pending)
    }

    /// Stores a batch's responses, to be read from the start.
    pub fn respond(&mut self, response: Vec<u8>) {
        self.response = response;
        self.read = 0;
    }

    /// The next `len` bytes of the responses.
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
        let (req, used) = parse(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
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
        let (req, _) = parse(b"eval go 5 2 b/k\nx=1;;in").unwrap().unwrap();
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
        let (_, used) = parse(b"exec a.b 0 b/k\nexec").unwrap().unwrap();
        assert_eq!(used, 15, "the next request's start is left");
        assert!(parse(format!("exec a.b {} b/k\n", MAX_BODY + 1).as_bytes()).is_err());
    }

    #[test]
    fn an_exchange_answers_in_order_and_takes_a_second_request() {
        let mut x = Exchange::default();
        x.write(b"exec a.b 2 b/k\nh").unwrap();
        assert!(x.take_pending().is_empty());
        x.write(b"i").unwrap();
        let batch = x.take_pending();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].input, b"hi");
        assert!(x.take_pending().is_empty());
        x.respond(response(0, b"out", ""));
        assert_eq!(x.read(3), b"0 3");
        assert_eq!(x.read(100), b" 0\nout");
        x.write(b"exec a.b 0 b/k\n").unwrap();
        assert_eq!(x.take_pending().len(), 1);
    }

    #[test]
    fn pipelined_requests_make_one_batch_and_a_bad_write_drops_only_its_own() {
        let mut x = Exchange::default();
        x.write(b"exec a.b 1 b/k\n1exec a.b 1 b/k\n2exec a.")
            .unwrap();
        x.write(b"b 1 b/k\n3").unwrap();
        x.write(b"exec a.b 1 b/k\n4run x\n").unwrap_err();
        let inputs: Vec<_> = x.take_pending().into_iter().map(|r| r.input).collect();
        assert_eq!(inputs, [b"1", b"2", b"3"]);
        // A write after the read starts a new batch and drops the unread responses.
        x.respond(response(0, b"", ""));
        x.write(b"exec a.b 0 b/k\n").unwrap();
        assert_eq!(x.read(100), b"");
        for _ in 1..MAX_BATCH {
            x.write(b"exec a.b 0 b/k\n").unwrap();
        }
        x.write(b"exec a.b 0 b/k\n").unwrap_err();
        assert_eq!(x.take_pending().len(), MAX_BATCH);
    }
}
