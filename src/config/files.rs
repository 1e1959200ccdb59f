//! Reading the files the configuration names: only regular files, each under a size cap,
//! so that `/dev/zero`, `/dev/urandom` or a FIFO given as a path is a clear error rather
//! than a hang or a process that eats the machine's memory.
//!
//! Threads: `main`, once, while loading.

use std::io::{self, Read};
use std::path::Path;

/// The configuration file: a real one is a few KiB.
pub(super) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A PEM file (certificate chain, key, CA bundle): the system's whole CA bundle is about
/// 220 KiB.
pub(super) const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// Reads `path` whole if it is a regular file of at most `cap` bytes. The type is checked
/// before opening (opening a FIFO for reading blocks until a writer comes) and again on
/// the open file, and the read stops after `cap` bytes whatever the size claimed.
pub(super) fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    check_type(&std::fs::metadata(path)?)?;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    check_type(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len().min(cap) as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap || meta.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is larger than {} KiB", cap / 1024),
        ));
    }
    Ok(bytes)
}

fn check_type(meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is not a regular file ({})", kind(meta.file_type())),
    ))
}

/// What a non-regular file is, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_oversized_files_are_refused() {
        let e = read_regular(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(e.to_string(), "is not a regular file (a character device)");
        let e = read_regular(Path::new("/"), 1024).unwrap_err();
        assert_eq!(e.to_string(), "is not a regular file (a directory)");
        let dir = std::env::temp_dir().join(format!("uwpx-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::File::create(&big).unwrap().set_len(4096).unwrap();
        let e = read_regular(&big, 2048).unwrap_err();
        assert_eq!(e.to_string(), "is larger than 2 KiB");
        assert_eq!(read_regular(&big, 4096).unwrap().len(), 4096);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
