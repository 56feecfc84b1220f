//! `lunafs call`, `lunafs class ...` and `lunafs package ...`: the object-class commands.
//! They work on a mounted lunafs through its `/.lunafs` files (the store is locked by the
//! mount), so they need nothing but the mount and behave exactly like a script that writes
//! those files. Sources are compiled here first, so a syntax error is reported with Lua's
//! own message before anything is sent.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::error::{Error, Result};
use crate::lua::Engine;

#[derive(Debug, Subcommand)]
pub enum ClassCmd {
    /// Install (or replace) a class from a Lua file; NAME defaults to the file's stem.
    Put { file: PathBuf, name: Option<String> },
    /// Print a class's source.
    Get { name: String },
    /// List the installed classes.
    Ls,
    /// Remove a class.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PackageCmd {
    /// Install version VERSION of package NAME from a Lua file (module NAME) or a directory
    /// (init.lua is module NAME, a/b.lua is module NAME.a.b).
    Add {
        name: String,
        version: String,
        path: PathBuf,
    },
    /// List installed modules as MODULE@VERSION.
    Ls,
    /// Remove package NAME (only VERSION if given).
    Rm {
        name: String,
        version: Option<String>,
    },
}

/// The root of the lunafs mount holding `path`: the nearest ancestor that is a FUSE root
/// (inode 1) with a `.lunafs/version` file.
fn mount_root(path: &Path) -> Result<PathBuf> {
    let abs = fs::canonicalize(path).map_err(|e| Error::io(format!("{}", path.display()), e))?;
    for dir in abs.ancestors() {
        let is_root = fs::metadata(dir).is_ok_and(|m| m.ino() == 1);
        if is_root && dir.join(".lunafs/version").is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(Error::Usage(format!(
        "{} is not inside a lunafs mount",
        path.display()
    )))
}

pub(super) fn chosen_mount(mount: Option<&Path>) -> Result<PathBuf> {
    match mount {
        Some(m) => mount_root(m),
        None => match std::env::var_os("LUNAFS_MOUNT") {
            Some(m) => mount_root(Path::new(&m)),
            None => mount_root(Path::new(".")).map_err(|_| {
                Error::Usage(
                    "no lunafs mount given: use --mount MOUNTPOINT or $LUNAFS_MOUNT, or run inside the mount"
                        .into(),
                )
            }),
        },
    }
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| Error::io("reading standard input", e))?;
        return Ok(v);
    }
    fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Writes `data` to `path` and reports the close's error too (lunafs stores a class file
/// at close, and refuses it there).
pub(super) fn write_checked(path: &Path, data: &[u8]) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    f.write_all(data).map_err(|e| Error::io(ctx(), e))?;
    nix::unistd::close(f).map_err(|e| Error::io(ctx(), e.into()))
}

pub fn call(
    file: &Path,
    method: &str,
    input: Option<String>,
    input_file: Option<&Path>,
    script: Option<&Path>,
) -> Result<i32> {
    // The object itself is not resolved here (a symlink names itself, not its target): only
    // its directory, to find the mount and the path inside it.
    let name = file
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file", file.display())))?;
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(parent).map_err(|e| Error::io(format!("{}", file.display()), e))?;
    let root = mount_root(&dir)?;
    let abs = dir.join(name);
    // The path's own bytes go in the request: a name need not be UTF-8.
    let rel_path = abs
        .strip_prefix(&root)
        .map_err(|_| Error::Usage(format!("{} is not inside a lunafs bucket", file.display())))?;
    let rel = rel_path.as_os_str().as_bytes();
    let shown = rel_path.display();
    let input = match (input, input_file) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(f)) => read_file(f)?,
        (None, None) => Vec::new(),
    };
    let mut request = match script {
        Some(path) => {
            let source = read_file(path)?;
            Engine::check(&path.display().to_string(), &source)?;
            let mut r = format!("eval {method} {} {} ", source.len(), input.len()).into_bytes();
            r.extend_from_slice(rel);
            r.push(b'\n');
            r.extend_from_slice(&source);
            r
        }
        None => {
            if !method.contains('.') {
                return Err(Error::Usage(format!(
                    "{method:?}: expected CLASS.METHOD (or METHOD with --script)"
                )));
            }
            let mut r = format!("exec {method} {} ", input.len()).into_bytes();
            r.extend_from_slice(rel);
            r.push(b'\n');
            r
        }
    };
    request.extend_from_slice(&input);
    let call_file = root.join(".lunafs/call");
    let ctx = || format!("calling through {}", call_file.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&call_file)
        .map_err(|e| Error::io(ctx(), e))?;
    f.write_all(&request).map_err(|e| Error::io(ctx(), e))?;
    let mut response = Vec::new();
    f.read_to_end(&mut response)
        .map_err(|e| Error::io(ctx(), e))?;
    let (result, output, message) = parse_response(&response)
        .ok_or_else(|| Error::Usage(format!("malformed response from {}", call_file.display())))?;
    std::io::stdout()
        .write_all(output)
        .and_then(|_| std::io::stdout().flush())
        .map_err(|e| Error::io("writing the output", e))?;
    if result < 0 {
        let errno = nix::errno::Errno::from_raw(-result);
        eprintln!("lunafs: {method} on {shown}: result {result} ({errno}): {message}");
        return Ok(1);
    }
    if result > 0 {
        eprintln!("result {result}");
    }
    Ok(0)
}

/// RESULT OUTPUT_LEN MESSAGE_LEN\n OUTPUT MESSAGE (see fs::call).
fn parse_response(r: &[u8]) -> Option<(i32, &[u8], String)> {
    let nl = r.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&r[..nl]).ok()?;
    let mut it = head.split(' ');
    let result: i32 = it.next()?.parse().ok()?;
    let out_len: usize = it.next()?.parse().ok()?;
    let msg_len: usize = it.next()?.parse().ok()?;
    let body = &r[nl + 1..];
    if body.len() != out_len.checked_add(msg_len)? {
        return None;
    }
    let message = String::from_utf8_lossy(&body[out_len..]).into_owned();
    Some((result, &body[..out_len], message))
}

pub(super) fn list(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn class(action: ClassCmd, mount: Option<&Path>) -> Result<i32> {
    let dir = chosen_mount(mount)?.join(".lunafs/classes");
    match action {
        ClassCmd::Put { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .ok_or_else(|| Error::Usage(format!("{}: no file name", file.display())))?,
            };
            crate::core::class::check_new_class(&name)?;
            let source = read_file(&file)?;
            Engine::check(&file.display().to_string(), &source)?;
            write_checked(&dir.join(format!("{name}.lua")), &source)?;
        }
        ClassCmd::Get { name } => {
            let source = fs::read(dir.join(format!("{name}.lua")))
                .map_err(|e| Error::io(format!("class {name}"), e))?;
            std::io::stdout()
                .write_all(&source)
                .map_err(|e| Error::io("writing the source", e))?;
        }
        ClassCmd::Ls => {
            for n in list(&dir)? {
                println!("{}", n.strip_suffix(".lua").unwrap_or(&n));
            }
        }
        ClassCmd::Rm { name } => fs::remove_file(dir.join(format!("{name}.lua")))
            .map_err(|e| Error::io(format!("class {name}"), e))?,
    }
    Ok(0)
}

/// The modules of a package directory: (module suffix, file), `init.lua` as the package.
fn modules_in(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))? {
        let entry = entry.map_err(|e| Error::io(format!("{}", dir.display()), e))?;
        let path = entry.path();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            modules_in(&path, &format!("{prefix}.{stem}"), out)?;
        } else if path.extension().is_some_and(|e| e == "lua") {
            let module = if stem == "init" {
                prefix.to_string()
            } else {
                format!("{prefix}.{stem}")
            };
            out.push((module, path));
        }
    }
    Ok(())
}

pub fn package(action: PackageCmd, mount: Option<&Path>) -> Result<i32> {
    let dir = chosen_mount(mount)?.join(".lunafs/packages");
    match action {
        PackageCmd::Add {
            name,
            version,
            path,
        } => {
            crate::core::class::check_class_name(&name)?;
            let mut modules = Vec::new();
            if path.is_dir() {
                modules_in(&path, &name, &mut modules)?;
                if modules.is_empty() {
                    return Err(Error::Usage(format!("{}: no .lua files", path.display())));
                }
            } else {
                modules.push((name.clone(), path.clone()));
            }
            let sources = modules
                .into_iter()
                .map(|(module, file)| {
                    let source = read_file(&file)?;
                    Engine::check(&file.display().to_string(), &source)?;
                    Ok((module, source))
                })
                .collect::<Result<Vec<_>>>()?;
            for (module, source) in sources {
                write_checked(&dir.join(format!("{module}@{version}.lua")), &source)?;
                println!("{module}@{version}");
            }
        }
        PackageCmd::Ls => {
            for n in list(&dir)? {
                println!("{}", n.strip_suffix(".lua").unwrap_or(&n));
            }
        }
        PackageCmd::Rm { name, version } => {
            let mut removed = 0;
            for n in list(&dir)? {
                let Some((module, v)) = n.strip_suffix(".lua").and_then(|s| s.split_once('@'))
                else {
                    continue;
                };
                let package = module.split('.').next().unwrap_or(module);
                if package == name && version.as_deref().is_none_or(|want| want == v) {
                    fs::remove_file(dir.join(&n))
                        .map_err(|e| Error::io(format!("removing {n}"), e))?;
                    removed += 1;
                }
            }
            if removed == 0 {
                return Err(Error::Usage(format!("package {name} is not installed")));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn responses_parse() {
        let (r, out, msg) = parse_response(b"-2 3 4\nabcnope").unwrap();
        assert_eq!((r, out, msg.as_str()), (-2, &b"abc"[..], "nope"));
        assert!(parse_response(b"0 5 0\nabc").is_none());
    }
}
