//! The crate's one error type and its one errno mapping.
//!
//! Every failure a FUSE caller, a CLI user or (later) a Lua handler can see is a variant here,
//! carrying the name or id it is about. `Error::errno` is the only place errnos are chosen; the
//! FUSE adapter and the CLI never pick their own.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}: is a directory")]
    IsDir(String),
    #[error("{0}: cannot rename or link across buckets")]
    CrossBucket(String),
    #[error("name is {0} bytes long, the limit is 255")]
    NameTooLong(usize),
    #[error("invalid name {0:?}")]
    InvalidName(String),
    #[error("{0}: operation not permitted")]
    NotPermitted(String),
    #[error("{0}: permission denied")]
    AccessDenied(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: no such attribute")]
    NoAttr(String),
    #[error("{0}: value of {1} bytes is larger than the 65536 bytes the kernel allows")]
    ValueTooLarge(String, usize),
    #[error("reply of {0} bytes does not fit the caller's buffer")]
    BufferTooSmall(usize),
    #[error("{0}: over the memory limit")]
    NoMemory(String),
    #[error("{0}: not supported by lunafs")]
    Unsupported(String),
    #[error("{0}: file would exceed the maximum file size")]
    FileTooBig(u64),
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    #[error("inode {0}: too many links")]
    TooManyLinks(u64),
    #[error("store error: {0}")]
    Store(#[from] rocksdb::Error),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A checked version changed before the commit (another mount changed what the
    /// operation read): the operation runs again.
    #[error("another mount changed what this operation read")]
    Conflict,
    #[error("{0}")]
    Contended(String),
    /// A shared engine (etcd, RADOS) failed or did not answer in time; the message names it.
    #[error("{0}")]
    Backend(String),
    #[error("store {0} is in use by another lunafs process (is it mounted elsewhere?)")]
    StoreLocked(PathBuf),
    #[error("{path} is not a lunafs store: {why}")]
    NotAStore { path: PathBuf, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{script}: {message}")]
    Script { script: String, message: String },
    #[error("{what}: handler failed with result -{errno}: {message}")]
    Handler {
        what: String,
        errno: i32,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The positive errno a FUSE caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::Busy(_) => libc::EBUSY,
            Error::NotDir(_) => libc::ENOTDIR,
            Error::IsDir(_) => libc::EISDIR,
            Error::CrossBucket(_) => libc::EXDEV,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::InvalidName(_) | Error::InvalidArgument(_) | Error::Usage(_) => libc::EINVAL,
            // EPERM, not EACCES: permission bits are the kernel's job (default_permissions);
            // what reaches us is a structural refusal, e.g. a regular file at the root.
            Error::NotPermitted(_) => libc::EPERM,
            // Checks lunafs itself makes for the caller (calls by path), as the kernel would.
            Error::AccessDenied(_) => libc::EACCES,
            Error::NoAttr(_) => libc::ENODATA,
            // getxattr of an omap value written by a handler that is larger than the kernel's
            // xattr limit: E2BIG is what the kernel itself answers for oversized values.
            Error::ValueTooLarge(..) => libc::E2BIG,
            Error::BufferTooSmall(_) => libc::ERANGE,
            // EOPNOTSUPP (== ENOTSUP on Linux) is what setfattr/getfacl expect for ACLs.
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::FileTooBig(_) => libc::EFBIG,
            Error::NoMemory(_) => libc::ENOMEM,
            Error::BadHandle(_) => libc::EBADF,
            Error::TooManyLinks(_) => libc::EMLINK,
            // Storage failures are I/O errors to the caller; the message goes to the log.
            Error::Store(_)
            | Error::Corrupt(_)
            | Error::Conflict
            | Error::Contended(_)
            | Error::Backend(_) => libc::EIO,
            Error::StoreLocked(_) => libc::EBUSY,
            Error::NotAStore { .. } => libc::EINVAL,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            // A class or module that does not compile: the caller sent a bad file.
            Error::Script { .. } => libc::EINVAL,
            // A handler's negative result is the errno its caller sees (setfattr fails with
            // it); a result outside the errno range would mean nothing to the caller.
            Error::Handler { errno, .. } if (1..4096).contains(errno) => *errno,
            Error::Handler { .. } => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_error_maps_to_its_posix_errno() {
        let cases: Vec<(Error, i32)> = vec![
            (Error::NotFound("a".into()), libc::ENOENT),
            (Error::Exists("a".into()), libc::EEXIST),
            (Error::NotEmpty("a".into()), libc::ENOTEMPTY),
            (Error::NotDir("a".into()), libc::ENOTDIR),
            (Error::IsDir("a".into()), libc::EISDIR),
            (Error::CrossBucket("a".into()), libc::EXDEV),
            (Error::NameTooLong(256), libc::ENAMETOOLONG),
            (Error::NotPermitted("a".into()), libc::EPERM),
            (Error::AccessDenied("a".into()), libc::EACCES),
            (
                Error::Script {
                    script: "md5".into(),
                    message: "syntax".into(),
                },
                libc::EINVAL,
            ),
            (
                Error::Handler {
                    what: "a.b".into(),
                    errno: libc::ENOENT,
                    message: String::new(),
                },
                libc::ENOENT,
            ),
            (
                Error::Handler {
                    what: "a.b".into(),
                    errno: 70000,
                    message: String::new(),
                },
                libc::EIO,
            ),
            (Error::NoAttr("a".into()), libc::ENODATA),
            (Error::ValueTooLarge("a".into(), 70000), libc::E2BIG),
            (Error::BufferTooSmall(10), libc::ERANGE),
            (Error::Unsupported("a".into()), libc::EOPNOTSUPP),
            (Error::Corrupt("a".into()), libc::EIO),
            (Error::NoMemory("a".into()), libc::ENOMEM),
            (
                Error::io("x", io::Error::from_raw_os_error(libc::ENOSPC)),
                libc::ENOSPC,
            ),
        ];
        for (err, errno) in cases {
            assert_eq!(err.errno(), errno, "{err}");
        }
    }

    #[test]
    fn messages_name_the_thing() {
        assert!(Error::NotFound("photos/cat.jpg".into())
            .to_string()
            .contains("photos/cat.jpg"));
    }
}
