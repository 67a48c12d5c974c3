//! Where segments live: a small file-like interface over the durability point, so that the writer
//! can be tested against a store that fails on purpose, and a local-directory implementation.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Prefix of segment names; the rest is the first sequence, zero-padded so names sort in order.
pub const SEGMENT_PREFIX: &str = "seg-";
/// Suffix of segment names.
pub const SEGMENT_SUFFIX: &str = ".jsonl";

/// The name of the segment whose first record is `first_sequence`.
pub fn segment_name(first_sequence: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_sequence:020}{SEGMENT_SUFFIX}")
}

/// Whether `name` looks like a segment name.
pub fn is_segment_name(name: &str) -> bool {
    name.strip_prefix(SEGMENT_PREFIX)
        .and_then(|r| r.strip_suffix(SEGMENT_SUFFIX))
        .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// What a file that is not a regular file is, in words (`None` for a regular file).
fn not_regular(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_file() {
        None
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_char_device() {
        Some("a character device")
    } else {
        Some("not a regular file")
    }
}

/// What a file is, in words: "a regular file", "a FIFO", "a symbolic link", …
pub fn file_kind(t: std::fs::FileType) -> &'static str {
    not_regular(t).unwrap_or("a regular file")
}

/// Reads a file of the audit directory (a segment, a recording, a witnessed checkpoint, a public
/// key) only if it is a regular file: a FIFO, a device, a socket, a directory or a symbolic link
/// put in its place is refused (`InvalidData`, "not a regular file (a FIFO)") without being
/// read, so a reader never blocks on it or follows it elsewhere. The type is checked before
/// opening and again on the open descriptor (opened with `O_NOFOLLOW | O_NONBLOCK`, so that a
/// FIFO swapped in between does not block the open either).
pub fn read_regular_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let refuse = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file ({what})"),
        )
    };
    if let Some(what) = not_regular(std::fs::symlink_metadata(path)?.file_type()) {
        return Err(refuse(what));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if let Some(what) = not_regular(meta.file_type()) {
        return Err(refuse(what));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The directory of one log's segments.
pub trait SegmentStore: Send + Sync + Debug {
    /// Segment names, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A segment's bytes.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Opens a segment for appending, creating it if needed.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn SegmentFile>>;
    /// Deletes a segment.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations and deletions durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Keeps `bytes` someone else appended to segment `name` after byte `offset` (the writer
    /// then cuts them from the segment), durably, under a name that is not a segment name.
    /// Answers the name they are kept under; `None`: this store does not keep them (their
    /// SHA-256 is still recorded in the chain).
    fn keep_foreign(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<Option<String>> {
        let _ = (name, offset, bytes);
        Ok(None)
    }
    /// Keeps the bytes of the file this writer wrote as segment `name` after another file took
    /// its name (see [`SegmentFile::displaced`]), durably, under a name that is not a segment
    /// name. Answers that name; `None`: this store does not keep them.
    fn keep_displaced(&self, name: &str, bytes: &[u8]) -> io::Result<Option<String>> {
        let _ = (name, bytes);
        Ok(None)
    }
}

/// One segment open for appending.
pub trait SegmentFile: Send + Debug {
    /// Appends all of `data`. On error an unknown prefix of `data` may have been written: the
    /// caller truncates back.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes appended data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// A handle that makes this segment's appended data durable from another thread while
    /// appends go on (the writer's background sync at `os-write` durability). `None`: the store
    /// has no such handle, and every sync happens under the writer's lock.
    fn sync_handle(&self) -> io::Result<Option<Box<dyn SegmentSync>>> {
        Ok(None)
    }
    /// Whether the segment's name still leads to the file this handle writes: `Some(what was
    /// found)` when it does not (another file renamed over it, or the name removed), so that
    /// what is appended through this handle would not be in the log. `None`: it does, or the
    /// store cannot tell.
    fn displaced(&self) -> io::Result<Option<String>> {
        Ok(None)
    }
    /// Everything written to this file, read back through the open handle (also when its name
    /// now leads elsewhere). `None`: the store cannot read it back.
    fn read_back(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Makes a segment's data durable (fdatasync) without holding its [`SegmentFile`].
pub trait SegmentSync: Send {
    /// fdatasync of everything appended so far.
    fn sync_data(&self) -> io::Result<()>;
}

impl SegmentSync for File {
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Segments in a local directory.
#[derive(Debug, Clone)]
pub struct LocalSegmentStore {
    dir: PathBuf,
}

impl LocalSegmentStore {
    /// A store in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if !is_segment_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a segment name: {name:?}"),
            ));
        }
        Ok(self.dir.join(name))
    }
}

impl SegmentStore for LocalSegmentStore {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str()
                && is_segment_name(name)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        read_regular_file(&self.path(name)?)
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn SegmentFile>> {
        let path = self.path(name)?;
        // Readable too, so that a file whose name was taken over can still be read back.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        Ok(Box::new(LocalSegmentFile { file, path }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn keep_foreign(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<Option<String>> {
        self.keep_as(name, &format!("{name}.foreign-{offset:020}"), bytes)
    }

    fn keep_displaced(&self, name: &str, bytes: &[u8]) -> io::Result<Option<String>> {
        self.keep_as(name, &format!("{name}.displaced"), bytes)
    }
}

impl LocalSegmentStore {
    /// Writes `bytes` durably to a new file `base` (or `base.<n>` when taken) in the directory.
    fn keep_as(&self, name: &str, base: &str, bytes: &[u8]) -> io::Result<Option<String>> {
        self.path(name)?;
        for n in 0..1000u32 {
            let kept = match n {
                0 => base.to_owned(),
                n => format!("{base}.{n}"),
            };
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(&kept))
            {
                Ok(mut f) => {
                    f.write_all(bytes)?;
                    f.sync_all()?;
                    self.sync_dir()?;
                    return Ok(Some(kept));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("too many files named {base}"),
        ))
    }
}

#[derive(Debug)]
struct LocalSegmentFile {
    file: File,
    /// The name it was opened by (to notice another file renamed over it).
    path: PathBuf,
}

impl SegmentFile for LocalSegmentFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn sync_handle(&self) -> io::Result<Option<Box<dyn SegmentSync>>> {
        // A second descriptor of the same open file: fdatasync through it covers every append.
        Ok(Some(Box::new(self.file.try_clone()?)))
    }

    fn read_back(&self) -> io::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(self.file.metadata()?.len())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, 0)?;
        Ok(Some(bytes))
    }

    fn displaced(&self) -> io::Result<Option<String>> {
        use std::os::unix::fs::MetadataExt as _;
        let open = self.file.metadata()?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(at) if at.dev() == open.dev() && at.ino() == open.ino() => Ok(None),
            Ok(at) => Ok(Some(format!(
                "{} is now another file (device {}, inode {}, {} bytes) than the one the gateway writes (device {}, inode {}, {} bytes): a file was renamed over it",
                self.path.display(),
                at.dev(),
                at.ino(),
                at.len(),
                open.dev(),
                open.ino(),
                open.len()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(format!(
                "{} no longer exists (renamed away or deleted) while the gateway writes it (device {}, inode {})",
                self.path.display(),
                open.dev(),
                open.ino()
            ))),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence() {
        assert!(segment_name(9) < segment_name(10));
        assert!(is_segment_name(&segment_name(1)));
        assert!(!is_segment_name("seg-1.jsonl"));
        assert!(!is_segment_name("../seg-00000000000000000001.jsonl"));
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular_file(&file).unwrap(), b"abc");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, what) in [
            (link, "symbolic link"),
            (fifo, "FIFO"),
            (dir.path().to_path_buf(), "directory"),
        ] {
            let e = read_regular_file(&path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn local_store_rejects_foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalSegmentStore::new(dir.path()).unwrap();
        assert!(store.open_append("../../etc/passwd").is_err());
        let mut f = store.open_append(&segment_name(1)).unwrap();
        f.append(b"abc").unwrap();
        f.truncate(1).unwrap();
        f.append(b"z").unwrap();
        assert_eq!(store.read(&segment_name(1)).unwrap(), b"az");
        assert_eq!(store.list().unwrap(), vec![segment_name(1)]);
    }
}
